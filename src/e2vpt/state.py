"""Comparing a file's tensors with what a model expects, for error messages that list
exactly which keys are missing, unexpected or of the wrong shape."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch


@dataclass
class StateDiff:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_shape: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong_shape)

    def describe(self, limit: int = 10) -> str:
        def listed(items: list[str]) -> str:
            return f"{items[:limit]}{' …' if len(items) > limit else ''}"

        return (
            f"missing keys {listed(self.missing)}, unexpected keys {listed(self.unexpected)}, "
            f"shape mismatches {listed(self.wrong_shape)}"
        )


def diff_state(
    expected: Mapping[str, torch.Tensor],
    given: Mapping[str, torch.Tensor],
    may_be_missing: Callable[[str], bool] = lambda key: False,
) -> StateDiff:
    return StateDiff(
        missing=sorted(k for k in expected if k not in given and not may_be_missing(k)),
        unexpected=sorted(k for k in given if k not in expected),
        wrong_shape=[
            f"{k}: file {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
            for k in expected
            if k in given and given[k].shape != expected[k].shape
        ],
    )
