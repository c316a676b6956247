"""Adapters (a baseline of the VPT paper, after Pfeiffer et al. 2020): a bottleneck
down → activation → up with a residual after each block's MLP, plus the head. The up
projection starts at zero, so the wrapped model starts as the backbone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from e2vpt.methods.base import ConfigError, MethodConfig, register_method
from e2vpt.settings import setting

if TYPE_CHECKING:
    from e2vpt.model import PromptedModel

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


class Bottleneck(nn.Module):
    def __init__(self, width: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.down = nn.Linear(width, hidden)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(hidden, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


class MLPWithAdapter(nn.Module):
    """A block's own MLP, then the adapter on its output (the block adds the residual
    of the MLP branch as before)."""

    def __init__(self, mlp: nn.Module, adapter: Bottleneck) -> None:
        super().__init__()
        self.mlp, self.adapter = mlp, adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.mlp(x))


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
    model.freeze_backbone()
    for block in model.backbone_blocks():
        width = int(block.mlp.fc2.out_features)
        hidden = max(1, width // config.reduction)
        block.mlp = MLPWithAdapter(block.mlp, Bottleneck(width, hidden, config.activation))
