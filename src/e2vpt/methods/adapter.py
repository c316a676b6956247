"""Adapters (a baseline of the VPT paper, after Pfeiffer et al. 2020): a bottleneck
down → activation → up with a residual after each block's MLP, plus the head. The up
projection starts at zero, so the wrapped model starts as the backbone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from e2vpt.methods.base import ConfigError, MethodConfig, register_method
from e2vpt.settings import setting

if TYPE_CHECKING:
    from torch import nn

    from e2vpt.model import PromptedModel

# the bottleneck's activation: option value → the torch.nn layer (e2vpt.layers.adapter)
ACTIVATIONS = ("relu", "gelu")  # torch.nn activations of these names


@dataclass
class AdapterConfig(MethodConfig):
    """Hidden width = block width / ``reduction`` (the VPT paper's r ∈ {8, 64, 256})."""

    name: ClassVar[str] = "adapter"
    changes_backbone: ClassVar[bool] = True
    default_base_lr: ClassVar[dict[str, float]] = {"sgd": 0.1, "adamw": 1e-3}
    size_fields: ClassVar[tuple[str, ...]] = ("reduction",)
    reduction: int = setting(8, "bottleneck width = block width / reduction")
    activation: str = setting("relu", "relu (Pfeiffer et al.) | gelu")

    def validate(self) -> None:
        super().validate()
        if self.reduction < 1:
            raise ConfigError(f"adapter: reduction must be >= 1, got {self.reduction}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"adapter: activation must be one of {', '.join(ACTIVATIONS)}, "
                f"got {self.activation!r}"
            )

    def tunes(self, model: nn.Module, name: str) -> bool:
        return name.startswith("head.") or ".mlp.adapter." in name


@register_method(AdapterConfig, "bottleneck adapters after every MLP + head (Adapter)", rank=6)
def apply_adapter(model: PromptedModel, config: AdapterConfig) -> None:
    from e2vpt.layers.adapter import Bottleneck, MLPWithAdapter

    model.freeze_backbone()
    for block in model.backbone_blocks():
        width = int(block.mlp.fc2.out_features)
        hidden = max(1, width // config.reduction)
        block.mlp = MLPWithAdapter(block.mlp, Bottleneck(width, hidden, config.activation))


def __getattr__(name: str) -> object:
    """The modules this method builds live in :mod:`e2vpt.layers.adapter` (torch); the
    old names here still find them."""
    if name in ("Bottleneck", "MLPWithAdapter"):
        from e2vpt.layers import adapter

        return getattr(adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
