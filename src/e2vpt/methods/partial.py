"""Partial-k (a baseline of the VPT paper): the last k blocks and the final norm are
fine-tuned with the head; the rest of the backbone stays frozen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from e2vpt.methods.base import ConfigError, MethodConfig, register_method
from e2vpt.settings import setting

if TYPE_CHECKING:
    from torch import nn

    from e2vpt.model import PromptedModel


@dataclass
class PartialConfig(MethodConfig):
    name: ClassVar[str] = "partial"
    changes_backbone: ClassVar[bool] = True
    # a whole block learns, as in full fine-tuning: a smaller lr than the prompt methods'
    default_base_lr: ClassVar[dict[str, float]] = {"sgd": 0.05, "adamw": 5e-4}
    size_fields: ClassVar[tuple[str, ...]] = ("blocks",)
    blocks: int = setting(1, "the last k blocks learn (1: the papers' Partial-1)")

    def validate(self) -> None:
        super().validate()
        if self.blocks < 1:
            raise ConfigError(f"partial: blocks must be >= 1, got {self.blocks}")

    def tunes(self, model: nn.Module, name: str) -> bool:
        blocks = model.backbone_blocks()[-self.blocks :]
        owners = {id(m) for m in (*blocks, model.final_norm())}
        prefixes = [f"{n}." for n, m in model.named_modules() if id(m) in owners]
        return name.startswith(("head.", *prefixes))


@register_method(PartialConfig, "last k blocks + final norm + head (Partial-k)", rank=2)
def apply_partial(model: PromptedModel, config: PartialConfig) -> None:
    model.freeze_backbone()
    blocks = model.backbone_blocks()
    if config.blocks > len(blocks):
        raise ConfigError(
            f"partial: blocks={config.blocks} but the backbone has {len(blocks)} blocks"
        )
    trained = [*blocks[-config.blocks :], model.final_norm()]
    for module in trained:
        module.requires_grad_(True)
    # those blocks run in train mode (their dropout / drop-path), the rest stays in eval
    model.trained_backbone_modules = trained
