"""MLP-k (a baseline of the VPT paper): a k-layer MLP head on the frozen features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from e2vpt.layers.settings import MAX_ADDED_LAYERS
from e2vpt.methods.base import ConfigError, MethodConfig, register_method
from e2vpt.settings import setting

if TYPE_CHECKING:
    from torch import nn

    from e2vpt.model import PromptedModel


@dataclass
class MLPConfig(MethodConfig):
    """``layers`` Linear layers in all, the last one the head; the hidden ones keep the
    feature width (the paper's MLP-3: two hidden layers + the head)."""

    name: ClassVar[str] = "mlp"
    default_base_lr: ClassVar[dict[str, float]] = {"sgd": 0.2, "adamw": 0.04}
    head_only: ClassVar[bool] = True  # the backbone is frozen: features can be cached
    size_fields: ClassVar[tuple[str, ...]] = ("layers",)
    layers: int = setting(
        3, "Linear layers, the head included (3: MLP-3)", maximum=MAX_ADDED_LAYERS
    )

    def validate(self) -> None:
        super().validate()
        if self.layers < 1:
            raise ConfigError(f"mlp: layers must be >= 1, got {self.layers}")

    def tunes(self, model: nn.Module, name: str) -> bool:
        return name.startswith(("head.", "pre_head."))


@register_method(MLPConfig, "a k-layer MLP head on frozen features (MLP-k)", rank=3)
def apply_mlp(model: PromptedModel, config: MLPConfig) -> None:
    from e2vpt.layers.mlp_head import mlp_pre_head

    model.freeze_backbone()
    model.pre_head = mlp_pre_head(model.feature_width, config.layers)
