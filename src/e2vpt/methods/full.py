"""Full fine-tuning baseline: every weight learns, backbone in train mode, AdamW."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from e2vpt.methods.base import MethodConfig, register_method

if TYPE_CHECKING:
    from e2vpt.model import PromptedModel


@dataclass
class FullConfig(MethodConfig):
    name: ClassVar[str] = "full"
    trains_backbone: ClassVar[bool] = True
    optimizer: ClassVar[str] = "adamw"


@register_method(FullConfig, "everything (full fine-tuning, AdamW)")
def apply_full(model: PromptedModel, config: FullConfig) -> None:
    model.backbone.requires_grad_(True)
    model.frozen_backbone = False
