"""Recipes: named sets of the choices that decide what a run learns.

``official`` trains VPT and E²VPT exactly as the official VPT / E²VPT code does.
``default`` is e2vpt's own: the official value wherever a choice can change what is
learned, except where e2vpt measured a reason to differ or where the difference is an
engineering one (the lr changes per update instead of per epoch; pruned tokens leave
the sequence instead of running as zeros). Every choice stays settable one by one;
under ``official`` a value that contradicts the recipe is an error, not a silent
override.

A field left at ``auto`` (or None) takes its recipe's value. Method options the
official recipe fixes are declared by each method (``MethodConfig.official_options``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from e2vpt.errors import ConfigError

RECIPES = ("default", "official")
AUTO = "auto"

# the official E²VPT pruning grid: 10 % … 90 % of the visual tokens × 1, 3, 4, 6, 8, 9,
# 11 or 12 of each kept token's 16 segments (72 rewinds for 10 tokens)
OFFICIAL_TOKEN_FRACTIONS = [round(0.1 * k, 1) for k in range(1, 10)]
OFFICIAL_SEGMENT_COUNTS = (1, 3, 4, 6, 8, 9, 11, 12)
OFFICIAL_SEGMENTS = 16
OFFICIAL_SEGMENT_FRACTIONS = [c / OFFICIAL_SEGMENTS for c in OFFICIAL_SEGMENT_COUNTS]
DEFAULT_TOKEN_FRACTIONS = [0.25, 0.5, 0.75]
DEFAULT_SEGMENT_FRACTIONS = [0.0, 0.25, 0.5]
# the importance score the default recipe prunes by (see README: the importance study)
DEFAULT_SCORE = "ablation"


@dataclass(frozen=True)
class Choice:
    """One choice that can change what a run learns, and where each recipe stands."""

    field: str  # the config field (a TrainConfig field, a pruning setting or a method option)
    where: str  # train | prune | the method whose option it is
    official: Any
    default: Any
    what: str  # what the official code does, in words
    why: str  # why the default recipe follows it or not

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


TRAIN_CHOICES: dict[str, Choice] = {
    c.field: c
    for c in (
        Choice(
            "lr_schedule_unit",
            "train",
            "epoch",
            "update",
            "warm-up factor e/W for epoch e < W (epoch 0 runs at lr 0), then "
            "0.5·(1 + cos(π(e − W)/(T − W))), constant within an epoch",
            "the same curve at a finer grain (engineering): no epoch at lr 0",
        ),
        Choice(
            "head_init",
            "train",
            "kaiming",
            "kaiming",
            "head weight kaiming_normal_(fan_out): std √(2/C); bias −log 99",
            "follows the official code",
        ),
        Choice(
            "normalize",
            "train",
            "imagenet",
            "task",
            "ImageNet mean/std for every backbone and dataset",
            "the same on VTAB-1k and FGVC (task: ImageNet mean/std there); other data "
            "(image folders, built-in tasks) use the backbone's own statistics",
        ),
    )
}

PRUNE_CHOICES: dict[str, Choice] = {
    c.field: c
    for c in (
        Choice(
            "prune_mode",
            "prune",
            "zero",
            "remove",
            "pruned tokens multiplied by 0 and kept in every layer's sequence",
            "pruned tokens leave the sequence, so the pruned model runs fewer tokens "
            "(engineering: the point of pruning)",
        ),
        Choice(
            "score",
            "prune",
            "official",
            DEFAULT_SCORE,
            "signed mean of ∂L/∂mask over the training batches (masks trained), "
            "lowest pruned first",
            "measured: the official token scores are ~1e-5 of a token's effect "
            "(LayerNorm is scale-invariant); pruning half the tokens by ablation kept "
            "43.6 % of 44.0 % before retraining (official 42.2 %, random 38.6 %); "
            "after rewinding all scores tie",
        ),
        Choice(
            "token_fractions",
            "prune",
            OFFICIAL_TOKEN_FRACTIONS,
            DEFAULT_TOKEN_FRACTIONS,
            "10 % … 90 % of the visual tokens",
            "cost: 3 × 3 = 9 rewinds instead of 72 (each rewind is a full training run)",
        ),
        Choice(
            "segment_fractions",
            "prune",
            OFFICIAL_SEGMENT_FRACTIONS,
            DEFAULT_SEGMENT_FRACTIONS,
            "1, 3, 4, 6, 8, 9, 11 or 12 of each kept token's 16 segments",
            "cost, as above; 0 (token pruning alone) is in the grid",
        ),
    )
}


def check_recipe(recipe: str) -> None:
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")


def recipe_value(recipe: str, choice: Choice) -> Any:
    check_recipe(recipe)
    return choice.official if recipe == "official" else choice.default


def resolve_choice(recipe: str, choice: Choice, given: Any, flag: str | None = None) -> Any:
    """``given`` if set (not auto/None), else the recipe's value. Under ``official`` a
    given value that differs from the official one is an error naming both fixes;
    ``flag``: the setting's name where it is not the choice's own (a sweep's
    ``prune_token_fractions``), marked `so` for the command line to name its flag."""
    value = recipe_value(recipe, choice)
    if given is None or given == AUTO:
        return value
    if recipe == "official" and given != value:
        name = flag or f"`{choice.field}`"
        raise ConfigError(
            f"`recipe` official uses {name} {_show(value)} ({choice.what}), "
            f"but {_show(given)} was given; drop {name} or use `recipe` default"
        )
    return given


def check_method_options(recipe: str, method: str, conflicts: list[str]) -> None:
    """Method options (as given) that contradict the official recipe: one clear error."""
    if recipe == "official" and conflicts:
        raise ConfigError(
            f"`recipe` official fixes {method}'s {', '.join(conflicts)}; drop those "
            "options or use `recipe` default"
        )


def _show(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def choices_table() -> list[dict[str, str]]:
    """Every recipe choice as table rows (README's table of choices comes from this)."""
    from e2vpt.methods.base import _REGISTRY  # the registry is filled by e2vpt.methods

    rows = []
    for choice in (*TRAIN_CHOICES.values(), *PRUNE_CHOICES.values()):
        rows.append(
            {
                "choice": f"`{choice.flag}`",
                "official code": choice.what,
                "default recipe": _show(choice.default),
                "--recipe official": _show(choice.official),
                "why": choice.why,
            }
        )
    seen: set[type] = set()
    for spec in _REGISTRY.values():
        cls = spec.config_cls
        if cls in seen or not cls.official_options:
            continue
        seen.add(cls)
        defaults = cls().to_dict()
        for key, value in cls.official_options.items():
            rows.append(
                {
                    "choice": f"`--{key.replace('_', '-')}` ({cls.name})",
                    "official code": _show(value),
                    "default recipe": _show(defaults[key]),
                    "--recipe official": _show(value),
                    "why": "follows the official code",
                }
            )
    return rows
