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

from e2vpt.layers.settings import MAX_ADDED_LAYERS, MAX_LAYER_WIDTH
from e2vpt.methods.base import ConfigError, MethodConfig, register_method
from e2vpt.settings import setting

if TYPE_CHECKING:
    from torch import nn

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


@dataclass
class SidetuneConfig(MethodConfig):
    name: ClassVar[str] = "sidetune"
    # starting points for `e2vpt sweep`'s grid search, not tuned values
    default_base_lr: ClassVar[dict[str, float]] = {"sgd": 0.1, "adamw": 1e-3}
    size_fields: ClassVar[tuple[str, ...]] = ("side_network", "channels", "conv_layers")
    side_network: str = setting(BUILT_IN, "'convs' (built in) or a timm model name, e.g. resnet18")
    channels: int = setting(
        64, "width of the built-in side network's convolutions", maximum=MAX_LAYER_WIDTH
    )
    conv_layers: int = setting(
        4, "the built-in side network's stride-2 3×3 convolutions", maximum=MAX_ADDED_LAYERS
    )
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
        if self.side_network != BUILT_IN and not _is_timm_model(self.side_network):
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


def _is_timm_model(name: str) -> bool:
    import timm  # only a timm side network needs it, when its config is validated

    return bool(timm.is_model(name))


@register_method(SidetuneConfig, "a side network blended with frozen features + head", rank=4)
def apply_sidetune(model: PromptedModel, config: SidetuneConfig) -> None:
    from e2vpt.layers.side_network import SideNetwork, load_side_weights, timm_side_network

    model.freeze_backbone()
    network = (
        None
        if config.side_network == BUILT_IN
        else timm_side_network(config.side_network, pretrained=config.side_weights == HUB_WEIGHTS)
    )
    model.side_branch = SideNetwork(
        model.feature_width,
        config.channels,
        config.conv_layers,
        config.blend_init,
        network,
        name=config.side_network,
    )
    if config.side_weights and config.side_weights != HUB_WEIGHTS:
        load_side_weights(model.side_branch, Path(config.side_weights))


# the modules and loading this method builds on live in e2vpt.layers.side_network (torch)
_MOVED = ("SideNetwork", "build_conv_stack", "load_side_weights", "side_description")


def __getattr__(name: str) -> object:
    """The old names here still find what moved to :mod:`e2vpt.layers.side_network`."""
    if name in _MOVED:
        from e2vpt.layers import side_network

        return getattr(side_network, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
