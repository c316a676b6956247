"""BitFit: every bias term of the backbone plus the head learns (Eva's separate q/v
biases of its fused ``qkv`` too)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from e2vpt.methods.base import MethodConfig, register_method

if TYPE_CHECKING:
    from torch import nn

    from e2vpt.model import PromptedModel


def is_bias(name: str) -> bool:
    """A bias parameter's name: ``….bias``, or Eva's ``….q_bias`` / ``….v_bias``."""
    return name.endswith((".bias", "_bias"))


@dataclass
class BiasConfig(MethodConfig):
    name: ClassVar[str] = "bias"
    changes_backbone: ClassVar[bool] = True
    default_base_lr: ClassVar[dict[str, float]] = {"sgd": 0.2, "adamw": 0.04}

    def tunes(self, model: nn.Module, name: str) -> bool:
        return name.startswith("head.") or (name.startswith("backbone.") and is_bias(name))


@register_method(BiasConfig, "all biases + head (BitFit)", rank=5)
def apply_bias(model: PromptedModel, config: BiasConfig) -> None:
    model.freeze_backbone()
    for name, param in model.backbone.named_parameters():
        if is_bias(name):
            param.requires_grad_(True)
