"""Side-tuning (Zhang et al. 2020; a baseline of the VPT paper): a side network, trained
on the image, is blended with the frozen backbone's features,
α · frozen + (1 − α) · side, with α learned; then the head.

The side network is a config choice: the built-in ``convs`` (a stack of stride-2 3×3
convolutions and global average pooling; its depth and width are options) or any timm
model (``--side-network resnet18``), pooled; a linear projection maps it to the feature
width. It starts from random weights unless ``--side-weights`` gives a local weights file
(``.safetensors``, ``.pth``) or ``pretrained`` (timm's hub weights of a timm side
network). The trained side network is in the checkpoint: the weights file is read only
when a run starts, never when it is loaded or resumed."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import timm
import torch
from torch import nn

from e2vpt.backbones.weight_files import read_torch_file, unwrap_state
from e2vpt.data.core import note
from e2vpt.errors import BackboneError
from e2vpt.methods.base import ConfigError, MethodConfig, register_method
from e2vpt.settings import setting
from e2vpt.state import diff_state

if TYPE_CHECKING:
    from e2vpt.model import PromptedModel

BUILT_IN = "convs"
HUB_WEIGHTS = "pretrained"


def side_weights_argument(value: str) -> str:
    """``--side-weights``: ``pretrained`` or an existing file (the config makes it
    absolute: a sweep's trials run in other folders)."""
    if value == HUB_WEIGHTS:
        return value
    if not Path(value).is_file():
        raise argparse.ArgumentTypeError(
            f"side-network weights file {value} not found (give a .safetensors/.pth file, "
            f"or '{HUB_WEIGHTS}' for timm's weights of a timm --side-network)"
        )
    return value


def build_conv_stack(channels: int, layers: int) -> nn.Sequential:
    convs: list[nn.Module] = []
    in_channels = 3
    for _ in range(layers):
        convs += [nn.Conv2d(in_channels, channels, 3, stride=2, padding=1), nn.ReLU()]
        in_channels = channels
    return nn.Sequential(*convs)


class SideNetwork(nn.Module):
    """Image → a feature-width vector, blended with the frozen features. The built-in
    stack lives in ``convs`` (its tensor names in older checkpoints), a timm side network
    in ``network``."""

    def __init__(
        self, width: int, config: SidetuneConfig, network: nn.Module | None = None
    ) -> None:
        super().__init__()
        if network is None:
            self.convs = build_conv_stack(config.channels, config.conv_layers)
            out_width = config.channels
        else:
            self.network = network
            out_width = int(network.num_features)
        self.project = nn.Linear(out_width, width)
        # α = sigmoid(alpha_logit): the blend starts at ``blend_init``
        self.alpha_logit = nn.Parameter(torch.logit(torch.tensor(float(config.blend_init))))

    @property
    def body(self) -> nn.Module:
        """The side network proper (what ``--side-weights`` loads)."""
        return self.network if hasattr(self, "network") else self.convs

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "network"):
            return self.network(images)  # timm, num_classes=0: pooled features
        return self.convs(images).mean(dim=(2, 3))

    def forward(self, features: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        side = self.project(self.encode(images))
        alpha = torch.sigmoid(self.alpha_logit)
        return alpha * features + (1 - alpha) * side.to(features.dtype)


@dataclass
class SidetuneConfig(MethodConfig):
    name: ClassVar[str] = "sidetune"
    # starting points for `e2vpt sweep`'s grid search, not tuned values
    default_base_lr: ClassVar[dict[str, float]] = {"sgd": 0.1, "adamw": 1e-3}
    size_fields: ClassVar[tuple[str, ...]] = ("side_network", "channels", "conv_layers")
    side_network: str = setting(BUILT_IN, "'convs' (built in) or a timm model name, e.g. resnet18")
    channels: int = setting(64, "width of the built-in side network's convolutions")
    conv_layers: int = setting(4, "the built-in side network's stride-2 3×3 convolutions")
    blend_init: float = setting(
        0.5, "α, the blend's starting weight on the frozen features (learned)"
    )
    side_weights: str = setting(
        "",
        "the side network's starting weights: FILE or 'pretrained'",
        parse=side_weights_argument,
        metavar="FILE|pretrained",
    )

    def __post_init__(self) -> None:
        if self.side_weights and self.side_weights != HUB_WEIGHTS:
            self.side_weights = os.path.abspath(self.side_weights)

    def describe_size(self) -> str:
        if self.side_network == BUILT_IN:
            return f"side_network={BUILT_IN}, channels={self.channels}, layers={self.conv_layers}"
        return f"side_network={self.side_network}"

    def validate(self) -> None:
        super().validate()
        if self.channels < 1 or self.conv_layers < 1:
            raise ConfigError(
                "sidetune: channels and conv_layers must be >= 1, got "
                f"{self.channels}, {self.conv_layers}"
            )
        if not 0 < self.blend_init < 1:
            raise ConfigError(f"sidetune: blend_init must be in (0, 1), got {self.blend_init}")
        if self.side_network != BUILT_IN and not timm.is_model(self.side_network):
            raise ConfigError(
                f"sidetune: side_network {self.side_network!r} is neither '{BUILT_IN}' nor a "
                "timm model name (see timm.list_models(), e.g. resnet18)"
            )
        if self.side_weights == HUB_WEIGHTS and self.side_network == BUILT_IN:
            raise ConfigError(
                f"sidetune: side_weights='{HUB_WEIGHTS}' needs a timm --side-network; the "
                f"built-in '{BUILT_IN}' has no published weights (give a weights file)"
            )

    def for_restore(self) -> SidetuneConfig:
        return dataclasses.replace(self, side_weights="")

    def tunes(self, model: nn.Module, name: str) -> bool:
        return name.startswith(("head.", "side_branch."))


def _timm_side_network(config: SidetuneConfig) -> nn.Module:
    pretrained = config.side_weights == HUB_WEIGHTS
    try:
        return timm.create_model(config.side_network, pretrained=pretrained, num_classes=0)
    except Exception as err:  # noqa: BLE001 - hub and timm failures vary
        if not pretrained:
            raise
        raise BackboneError(
            f"could not fetch timm's weights for side network {config.side_network!r} "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "give a local weights file with --side-weights FILE"
        ) from err


def load_side_weights(side: SideNetwork, path: Path) -> None:
    """A side network's own state dict (or a training checkpoint holding it); a
    classifier the side network does not have is dropped, and that is said."""
    if not path.is_file():
        raise ConfigError(f"sidetune: side-network weights file {path} does not exist")
    state = unwrap_state(read_torch_file(path), path)
    body = side.body
    own = body.state_dict()
    classifier = getattr(body, "pretrained_cfg", {}).get("classifier")
    if classifier:
        dropped = [k for k in state if k.startswith(f"{classifier}.") and k not in own]
        if dropped:
            note(f"{path.name}: the side network has no classifier; dropped {', '.join(dropped)}")
            state = {k: v for k, v in state.items() if k not in dropped}
    diff = diff_state(own, state)
    if diff:
        raise ConfigError(
            f"sidetune: {path} does not fit side network {side_description(side)}: "
            f"{diff.describe()}"
        )
    body.load_state_dict(state)


def side_description(side: SideNetwork) -> str:
    return type(side.body).__name__ if hasattr(side, "network") else f"'{BUILT_IN}'"


@register_method(SidetuneConfig, "a side network blended with frozen features + head", rank=4)
def apply_sidetune(model: PromptedModel, config: SidetuneConfig) -> None:
    model.freeze_backbone()
    network = None if config.side_network == BUILT_IN else _timm_side_network(config)
    model.side_branch = SideNetwork(model.feature_width, config, network)
    if config.side_weights and config.side_weights != HUB_WEIGHTS:
        load_side_weights(model.side_branch, Path(config.side_weights))
