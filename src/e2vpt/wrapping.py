"""``wrap``: a backbone family (``e2vpt.families``) × a method (``e2vpt.methods``).

One backbone object can serve many models: prompts, heads, side networks and the
pooling live in the wrapper, so a method that leaves the backbone as it is shares it.
A method that changes backbone weights or modules (``changes_backbone``) takes the
object for itself: it is refused on a backbone other models use, and no model can be
wrapped onto the backbone it has changed."""

from __future__ import annotations

import weakref

from torch import nn

from e2vpt.errors import ConfigError
from e2vpt.families import family_of
from e2vpt.methods.base import MethodConfig, get_method
from e2vpt.model import PromptedModel

# backbone → the live models sharing it (weak both ways: a dropped model frees its place)
_SHARERS: weakref.WeakKeyDictionary[nn.Module, weakref.WeakSet[PromptedModel]] = (
    weakref.WeakKeyDictionary()
)
# set on a backbone (and so kept by copy.deepcopy) by the method that changed it
CHANGED_BY = "e2vpt_changed_by"
FRESH_COPY = "copy.deepcopy(backbone) before wrapping, or e2vpt.create_backbone(name) again"


def models_sharing(backbone: nn.Module) -> list[PromptedModel]:
    """The live models that use ``backbone`` without changing it."""
    return list(_SHARERS.get(backbone, ()))


def check_backbone_free(backbone: nn.Module, config: MethodConfig) -> None:
    """Refuse a backbone that a method has changed, and a backbone in use for a method
    that would change it; the message names the fix."""
    changed_by = getattr(backbone, CHANGED_BY, None)
    if changed_by:
        raise ConfigError(
            f"this backbone object carries the changes a {changed_by!r} model made to its "
            f"weights or modules, so no other model can use it; give each such model its own "
            f"backbone: {FRESH_COPY}"
        )
    users = models_sharing(backbone)
    if config.changes_backbone and users:
        names = ", ".join(sorted({m.method_name for m in users}))
        raise ConfigError(
            f"method {config.method_name!r} changes the backbone's weights or modules, but "
            f"{len(users)} model(s) ({names}) share this backbone object and would change "
            f"with it; give the {config.method_name} model its own backbone: {FRESH_COPY}"
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
    :data:`~e2vpt.model.HEAD_INITS`; the default is the official VPT/E²VPT head).

    Methods whose parts are prompts or heads leave ``backbone`` untouched, so any number
    of them can share it; a method that changes the backbone (full, bias, partial,
    adapter, LoRA) takes it for itself and is refused on a shared one."""
    if not isinstance(config, MethodConfig):
        raise ConfigError(
            f"config must be a method config such as E2VPTConfig(), got {type(config).__name__}"
        )
    config.validate()
    spec = get_method(config.method_name)
    check_backbone_free(backbone, config)
    model = family_of(backbone)(backbone, num_classes, backbone_name, global_pool, head_init)
    if config.changes_backbone:
        setattr(backbone, CHANGED_BY, spec.name)  # before apply: a failed apply leaves parts
        model.release_backbone_head()
    spec.apply(model, config)
    if not config.changes_backbone:
        _SHARERS.setdefault(backbone, weakref.WeakSet()).add(model)
    model.method_config = config
    model.train(model.training)
    return model
