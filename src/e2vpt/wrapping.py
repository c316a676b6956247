"""``wrap``: a backbone family (``e2vpt.families``) × a method (``e2vpt.methods``)."""

from __future__ import annotations

from torch import nn

from e2vpt.errors import ConfigError
from e2vpt.families import family_of
from e2vpt.methods.base import MethodConfig, get_method
from e2vpt.model import PromptedModel


def check_unwrapped(backbone: nn.Module) -> None:
    """Wrapping rewires the backbone object (its head, and the modules a method adds
    parts to): a second model on the same object is refused with the fix."""
    if getattr(backbone, "e2vpt_wrapped", None):
        raise ConfigError(
            f"this backbone object is already wrapped (by a {backbone.e2vpt_wrapped} model) and "
            "carries that model's parts; create a fresh backbone for each model, e.g. "
            "e2vpt.create_backbone(name) again or copy.deepcopy before wrapping"
        )


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
    backbone object is modified in place, so wrapping it a second time is refused."""
    if not isinstance(config, MethodConfig):
        raise ConfigError(
            f"config must be a method config such as E2VPTConfig(), got {type(config).__name__}"
        )
    config.validate()
    spec = get_method(config.method_name)
    check_unwrapped(backbone)
    model = family_of(backbone)(backbone, num_classes, backbone_name, global_pool, head_init)
    spec.apply(model, config)
    backbone.e2vpt_wrapped = spec.name  # its modules now carry this model's parts
    model.method_config = config
    model.train(model.training)
    return model
