"""Which tokens and segments survive: fractions + importance scores → a pruning plan."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from e2vpt.methods.base import ConfigError
from e2vpt.model import PromptedModel
from e2vpt.pruning.importance import ImportanceScores, prunable_prompts

_EPS = 1e-9


def min_kept_segments(segments: int) -> int:
    """A kept token keeps at least a quarter of its segments (4 of the default 16)."""
    return max(1, math.ceil(segments / 4))


def pruned_count(fraction: float, total: int) -> int:
    """How many of ``total`` entries a fraction removes: ⌊fraction · total⌋."""
    return math.floor(fraction * total + _EPS)


def check_fractions(
    token_fraction: float, segment_fraction: float, tokens: int, segments: int
) -> None:
    """Clear errors for fractions that cannot be met on this prompt geometry."""
    for label, value in (("token", token_fraction), ("segment", segment_fraction)):
        if not (isinstance(value, int | float) and math.isfinite(value)) or not 0 <= value < 1:
            raise ConfigError(f"{label} fraction must be in [0, 1), got {value!r}")
    if tokens - pruned_count(token_fraction, tokens) < 1:
        raise ConfigError(
            f"token fraction {token_fraction:g} would prune all {tokens} visual tokens; "
            f"at least 1 must stay, so use at most {(tokens - 1) / tokens:.4g}"
        )
    keep_min = min_kept_segments(segments)
    kept = segments - pruned_count(segment_fraction, segments)
    if kept < keep_min:
        raise ConfigError(
            f"segment fraction {segment_fraction:g} would keep {kept} of {segments} segments "
            f"per token; at least {keep_min} must stay, so use at most "
            f"{(segments - keep_min) / segments:.4g}"
        )


@dataclass(frozen=True)
class PruningPlan:
    token_fraction: float
    segment_fraction: float
    original_tokens: int
    segments: int
    kept_tokens: tuple[int, ...]  # original indices, ascending
    kept_segments: tuple[tuple[bool, ...], ...]  # per kept token, one flag per segment
    mode: str = "remove"  # remove: pruned tokens leave the sequence | zero: they stay as zeros

    @property
    def label(self) -> str:
        return f"tokens{self.token_fraction:g}_segments{self.segment_fraction:g}"

    def segment_mask(self) -> torch.Tensor:
        return torch.tensor(self.kept_segments, dtype=torch.bool)

    def to_dict(self) -> dict[str, Any]:
        return {
            "token_fraction": self.token_fraction,
            "segment_fraction": self.segment_fraction,
            "original_tokens": self.original_tokens,
            "segments": self.segments,
            "kept_tokens": list(self.kept_tokens),
            "kept_segments": [[int(b) for b in row] for row in self.kept_segments],
            "mode": self.mode,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPlan:
        return cls(
            token_fraction=float(data["token_fraction"]),
            segment_fraction=float(data["segment_fraction"]),
            original_tokens=int(data["original_tokens"]),
            segments=int(data["segments"]),
            kept_tokens=tuple(int(i) for i in data["kept_tokens"]),
            kept_segments=tuple(tuple(bool(b) for b in row) for row in data["kept_segments"]),
            mode=str(data.get("mode", "remove")),
        )


def _lowest(scores: torch.Tensor, count: int) -> set[int]:
    """Indices of the ``count`` lowest scores (ties: the lower index goes first)."""
    order = torch.sort(scores.double(), stable=True).indices
    return set(order[:count].tolist())


def make_plan(
    scores: ImportanceScores,
    token_fraction: float,
    segment_fraction: float,
    mode: str | None = None,
) -> PruningPlan:
    """Drop the lowest-scoring tokens, then within each kept token its lowest-scoring
    segments (scores from one importance pass over the unpruned model). ``mode``: what
    pruning a token means (None: what the scores were measured for)."""
    tokens, segments = scores.segment.shape
    check_fractions(token_fraction, segment_fraction, tokens, segments)
    dropped = _lowest(scores.token, pruned_count(token_fraction, tokens))
    kept_tokens = tuple(i for i in range(tokens) if i not in dropped)
    n_segments = pruned_count(segment_fraction, segments)
    kept_segments = []
    for token in kept_tokens:
        dropped_segments = _lowest(scores.segment[token], n_segments)
        kept_segments.append(tuple(s not in dropped_segments for s in range(segments)))
    return PruningPlan(
        token_fraction=float(token_fraction),
        segment_fraction=float(segment_fraction),
        original_tokens=tokens,
        segments=segments,
        kept_tokens=kept_tokens,
        kept_segments=tuple(kept_segments),
        mode=mode or scores.prune_mode,
    )


def apply_plan(model: PromptedModel, plan: PruningPlan) -> PromptedModel:
    """Prune ``model`` in place: fewer tokens in every block, zeroed segments stored
    sparsely. Build the optimizer afterwards (the prompt parameter is replaced)."""
    prompts = prunable_prompts(model)
    if (prompts.tokens, prompts.mask_segments) != (plan.original_tokens, plan.segments):
        raise ConfigError(
            f"the plan is for {plan.original_tokens} tokens × {plan.segments} segments but the "
            f"model has {prompts.tokens} × {prompts.mask_segments}"
        )
    prompts.prune(torch.tensor(plan.kept_tokens), plan.segment_mask(), mode=plan.mode)
    return model


def distinct_grid(
    token_fractions: list[float], segment_fractions: list[float], tokens: int, segments: int
) -> list[tuple[float, float]]:
    """The (token, segment) fraction pairs that prune different counts: with few tokens
    several fractions prune the same number (⌊0.1·5⌋ = ⌊0.15·5⌋ = 0); the first stays."""
    seen: set[tuple[int, int]] = set()
    grid = []
    for t in token_fractions:
        for s in segment_fractions:
            counts = (pruned_count(t, tokens), pruned_count(s, segments))
            if counts not in seen:
                seen.add(counts)
                grid.append((t, s))
    return grid
