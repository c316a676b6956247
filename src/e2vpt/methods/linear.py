"""Linear probing: only the classification head learns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from e2vpt.methods.base import MethodConfig, register_method

if TYPE_CHECKING:
    from e2vpt.model import PromptedModel


@dataclass
class LinearConfig(MethodConfig):
    name: ClassVar[str] = "linear"
    default_base_lr: ClassVar[dict[str, float]] = {"sgd": 0.2, "adamw": 0.04}
    head_only: ClassVar[bool] = True


@register_method(
    LinearConfig,
    "head only (linear probing)",
    rank=1,
    paper_anchors={"natural": 68.93, "specialized": 77.16, "structured": 26.84, "fgvc": 79.32},
)
def apply_linear(model: PromptedModel, config: LinearConfig) -> None:
    model.freeze_backbone()
