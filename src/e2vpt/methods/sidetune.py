"""Side-tuning (Zhang et al. 2020; a baseline of the VPT paper): a small side network,
trained from scratch on the image, is blended with the frozen backbone's features,
α · frozen + (1 − α) · side, with α learned; then the head. The side network here is a
stack of stride-2 3×3 convolutions, global average pooling and a projection to the
feature width (its depth and width are options)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from e2vpt.methods.base import ConfigError, MethodConfig, register_method

if TYPE_CHECKING:
    from e2vpt.model import PromptedModel


class SideNetwork(nn.Module):
    """Image → a feature-width vector, blended with the frozen features."""

    def __init__(self, width: int, channels: int, layers: int, alpha: float) -> None:
        super().__init__()
        convs: list[nn.Module] = []
        in_channels = 3
        for _ in range(layers):
            convs += [nn.Conv2d(in_channels, channels, 3, stride=2, padding=1), nn.ReLU()]
            in_channels = channels
        self.convs = nn.Sequential(*convs)
        self.project = nn.Linear(channels, width)
        # α = sigmoid(alpha_logit): the blend starts at ``alpha``
        self.alpha_logit = nn.Parameter(torch.logit(torch.tensor(float(alpha))))

    def forward(self, features: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        side = self.project(self.convs(images).mean(dim=(2, 3)))
        alpha = torch.sigmoid(self.alpha_logit)
        return alpha * features + (1 - alpha) * side.to(features.dtype)


@dataclass
class SidetuneConfig(MethodConfig):
    name: ClassVar[str] = "sidetune"
    # starting points for `e2vpt sweep`'s grid search, not tuned values
    default_base_lr: ClassVar[dict[str, float]] = {"sgd": 0.1, "adamw": 1e-3}
    size_fields: ClassVar[tuple[str, ...]] = ("channels", "conv_layers")
    channels: int = 64  # width of the side network's convolutions
    conv_layers: int = 4  # the side network's stride-2 3×3 convolutions
    blend_init: float = 0.5  # α, the blend's starting weight on the frozen features (learned)

    def validate(self) -> None:
        super().validate()
        if self.channels < 1 or self.conv_layers < 1:
            raise ConfigError(
                "sidetune: channels and conv_layers must be >= 1, got "
                f"{self.channels}, {self.conv_layers}"
            )
        if not 0 < self.blend_init < 1:
            raise ConfigError(f"sidetune: blend_init must be in (0, 1), got {self.blend_init}")

    def tunes(self, model: nn.Module, name: str) -> bool:
        return name.startswith(("head.", "side_branch."))


@register_method(SidetuneConfig, "a side network blended with frozen features + head", rank=4)
def apply_sidetune(model: PromptedModel, config: SidetuneConfig) -> None:
    model.freeze_backbone()
    model.side_branch = SideNetwork(
        model.feature_width, config.channels, config.conv_layers, config.blend_init
    )
