"""E²VPT prompt pruning and rewinding: importance → plan → rewind-retrain → select.

scores = importance_scores(model, images, labels)          # ∂L/∂γ, ∂L/∂μ per entry
apply_plan(model, make_plan(scores, 0.5, 0.25))           # fewer tokens, sparse segments
report = prune_run("runs/my_task", PruneSettings())       # the whole `e2vpt prune`

Importing the package imports no torch: each name below comes from its module on first
access, so :mod:`e2vpt.pruning.settings` stays cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from e2vpt.lazy import lazy_names

if TYPE_CHECKING:
    from e2vpt.pruning.importance import ImportanceScores, importance_scores
    from e2vpt.pruning.plan import PruningPlan, apply_plan, check_fractions, make_plan
    from e2vpt.pruning.search import PruneReport, prune_run
    from e2vpt.pruning.settings import SCORE_MODES, PruneSettings

# name → the module that is its home
_HOMES = {
    "SCORE_MODES": "e2vpt.pruning.settings",
    "PruneSettings": "e2vpt.pruning.settings",
    "ImportanceScores": "e2vpt.pruning.importance",
    "importance_scores": "e2vpt.pruning.importance",
    "PruningPlan": "e2vpt.pruning.plan",
    "apply_plan": "e2vpt.pruning.plan",
    "check_fractions": "e2vpt.pruning.plan",
    "make_plan": "e2vpt.pruning.plan",
    "PruneReport": "e2vpt.pruning.search",
    "prune_run": "e2vpt.pruning.search",
}


__getattr__, __dir__ = lazy_names("e2vpt.pruning", _HOMES, globals())


__all__ = [
    "SCORE_MODES",
    "ImportanceScores",
    "PruneReport",
    "PruneSettings",
    "PruningPlan",
    "apply_plan",
    "check_fractions",
    "importance_scores",
    "make_plan",
    "prune_run",
]
