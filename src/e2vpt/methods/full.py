"""Full fine-tuning baseline: every weight learns, backbone in train mode, AdamW."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from e2vpt.methods.base import MethodConfig, register_method

if TYPE_CHECKING:
    from torch import nn

    from e2vpt.model import PromptedModel


@dataclass
class FullConfig(MethodConfig):
    name: ClassVar[str] = "full"
    changes_backbone: ClassVar[bool] = True
    trains_backbone: ClassVar[bool] = True
    optimizer: ClassVar[str] = "adamw"
    default_base_lr: ClassVar[dict[str, float]] = {"sgd": 0.05, "adamw": 5e-4}
    large_checkpoint: ClassVar[bool] = True

    def tunes(self, model: nn.Module, name: str) -> bool:
        return True


@register_method(
    FullConfig,
    "everything (full fine-tuning, AdamW)",
    rank=0,
    paper_anchors={"natural": 75.88, "specialized": 83.36, "structured": 47.64, "fgvc": 88.54},
)
def apply_full(model: PromptedModel, config: FullConfig) -> None:
    model.backbone.requires_grad_(True)
    model.frozen_backbone = False
