"""What a pruning search is told, torch-free: the importance scores it can rank by,
:class:`PruneSettings` (``e2vpt prune``, ``e2vpt sweep --prune``) and the grid, score and
mode they resolve to under a recipe. The command line builds its flags from these and a
sweep checks them before torch is imported; :mod:`e2vpt.pruning.search` runs them."""

from __future__ import annotations

from dataclasses import dataclass

from e2vpt.backbones.names import check_weights_file
from e2vpt.errors import ConfigError
from e2vpt.layers.settings import PRUNE_MODES
from e2vpt.recipes import PRUNE_CHOICES, check_recipe, resolve_choice

# lower = pruned first, for every score
SCORE_MODES = ("ablation", "official", "abs", "signed", "random")
SCORE_DEFINITIONS = {
    "ablation": "tokens: how much the mean training loss rises when the token is taken "
    "out of every layer (removed, or zeroed in zero mode), measured exactly; segments: "
    "mean −∂L/∂μ, the first-order estimate of the same",
    "official": "mean over batches of ∂L/∂mask, lowest pruned first (the official E²VPT code)",
    "abs": "mean over batches of |∂L/∂mask| (the E²VPT paper's formulation)",
    "signed": "mean over batches of −∂L/∂mask: the first-order estimate of how much the "
    "loss rises when the entry is removed (mask 1 → 0)",
    "random": "uniform random scores from the run's seed (a control)",
}


@dataclass
class PruneSettings:
    """What ``e2vpt prune`` does. Fields left at None take the recipe's value (the
    run's own recipe unless ``recipe`` says otherwise)."""

    token_fractions: list[float] | None = None  # None: the recipe's grid
    segment_fractions: list[float] | None = None  # None: the recipe's grid
    score: str | None = None  # ablation | official | abs | signed | random; None: recipe's
    prune_mode: str | None = None  # remove | zero (kept as zero vectors); None: recipe's
    recipe: str | None = None  # None: the run's own; must match the run's
    output_dir: str | None = None  # None: RUN_DIR/pruned
    epochs: int | None = None  # rewind epochs; None: the run's own (the papers' choice)
    device: str | None = None  # None: the run's own
    weights: str | None = None  # the backbone's weights file; None: the path the run stored
    progress: bool = True

    def validate(self) -> None:
        if self.recipe is not None:
            check_recipe(self.recipe)
        if self.score is not None and self.score not in SCORE_MODES:
            raise ConfigError(f"`score` must be one of {SCORE_MODES}, got {self.score!r}")
        if self.prune_mode is not None and self.prune_mode not in PRUNE_MODES:
            raise ConfigError(f"`prune_mode` must be one of {PRUNE_MODES}, got {self.prune_mode!r}")
        if self.token_fractions == [] or self.segment_fractions == []:
            raise ConfigError("the pruning grid needs at least one token and one segment fraction")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        check_weights_file(self.weights)

    def resolve(self, run_recipe: str, setting_prefix: str = "") -> ResolvedPruning:
        """The grid, score and mode this pruning uses under the run's recipe; a value
        the recipe contradicts, or a recipe other than the run's, is an error naming the
        setting: `token_fractions` … here, `prune_token_fractions` … in a sweep
        (``setting_prefix`` "prune_"); `prune_mode` in both."""
        self.validate()
        recipe = self.recipe or run_recipe
        if recipe != run_recipe:
            raise ConfigError(
                f"this run was trained with `recipe` {run_recipe}; pruning rewinds it with its "
                f"own recipe, so it cannot be pruned with `recipe` {recipe}. Drop `recipe`, "
                f"or train the run with `recipe` {recipe}"
            )
        values = {
            name: resolve_choice(
                recipe,
                PRUNE_CHOICES[name],
                getattr(self, name),
                _setting(setting_prefix, name),
            )
            for name in ("token_fractions", "segment_fractions", "score", "prune_mode")
        }
        return ResolvedPruning(recipe=recipe, **values)


def _setting(prefix: str, name: str) -> str:
    return "`prune_mode`" if name == "prune_mode" else f"`{prefix}{name}`"


@dataclass(frozen=True)
class ResolvedPruning:
    recipe: str
    token_fractions: list[float]
    segment_fractions: list[float]
    score: str
    prune_mode: str
