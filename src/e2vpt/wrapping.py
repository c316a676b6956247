"""``wrap``: a backbone family (``e2vpt.families``) × a method (``e2vpt.methods``)."""

from __future__ import annotations

from torch import nn

from e2vpt.errors import ConfigError
from e2vpt.families import family_of
from e2vpt.methods.base import MethodConfig, get_method
from e2vpt.model import PromptedModel


def wrap(
    backbone: nn.Module,
    config: MethodConfig,
    num_classes: int,
    backbone_name: str | None = None,
    global_pool: str | None = None,
    head_init: str = "kaiming",
) -> PromptedModel:
    """Apply a method to a timm ViT or Swin: freeze what the method freezes, add its
    parts, attach a new ``num_classes`` head (``head_init``: one of
    :data:`~e2vpt.model.HEAD_INITS`; the default is the official VPT/E²VPT head). The
    backbone object is modified in place."""
    if not isinstance(config, MethodConfig):
        raise ConfigError(
            f"config must be a method config such as E2VPTConfig(), got {type(config).__name__}"
        )
    config.validate()
    spec = get_method(config.method_name)
    model = family_of(backbone)(backbone, num_classes, backbone_name, global_pool, head_init)
    spec.apply(model, config)
    model.method_config = config
    model.train(model.training)
    return model
