"""E²VPT prompt pruning and rewinding: importance → plan → rewind-retrain → select.

scores = importance_scores(model, images, labels)          # ∂L/∂γ, ∂L/∂μ per entry
apply_plan(model, make_plan(scores, 0.5, 0.25))           # fewer tokens, sparse segments
report = prune_run("runs/my_task", PruneSettings())       # the whole `e2vpt prune`
"""

from e2vpt.pruning.importance import SCORE_MODES, ImportanceScores, importance_scores
from e2vpt.pruning.plan import PruningPlan, apply_plan, check_fractions, make_plan
from e2vpt.pruning.search import PruneReport, PruneSettings, prune_run

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
