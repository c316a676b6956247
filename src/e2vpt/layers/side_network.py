"""The side network of Side-tuning (:mod:`e2vpt.methods.sidetune`): the built-in stack
of stride-2 convolutions or a timm model, its projection to the feature width and the
learned blend with the frozen features; and reading its starting weights from a file."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from e2vpt.backbones.hub import hub_overlay
from e2vpt.backbones.weight_files import read_torch_file, unwrap_state
from e2vpt.data.core import note
from e2vpt.errors import BackboneError, ConfigError
from e2vpt.state import diff_state


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
        self,
        width: int,
        channels: int,
        conv_layers: int,
        blend_init: float,
        network: nn.Module | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        self.name = name  # as the config names it, for messages
        if network is None:
            self.convs = build_conv_stack(channels, conv_layers)
            out_width = channels
        else:
            self.network = network
            out_width = int(network.num_features)
        self.project = nn.Linear(out_width, width)
        # α = sigmoid(alpha_logit): the blend starts at ``blend_init``
        self.alpha_logit = nn.Parameter(torch.logit(torch.tensor(float(blend_init))))

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


def timm_side_network(name: str, pretrained: bool) -> nn.Module:
    """A timm model as the side network: pooled features, no classifier."""
    try:
        # a hub that cannot be reached: the cached file, or an error now (no retries)
        overlay = hub_overlay(name) if pretrained else None
        extra = {"pretrained_cfg_overlay": overlay} if overlay else {}
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **extra)
    except Exception as err:  # noqa: BLE001 - hub and timm failures vary
        if not pretrained:
            raise
        raise BackboneError(
            f"could not fetch timm's weights for side network {name!r} "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "give a local weights file as `side_weights`"
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
    return type(side.body).__name__ if hasattr(side, "network") else f"'{side.name}'"
