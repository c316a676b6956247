"""The registry of backbone families: each is a :class:`~e2vpt.model.PromptedModel`
subclass in its own module, registered by name. ``wrap`` and ``load`` ask the registry
which family takes a backbone, so adding a family touches its module and one line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from e2vpt.errors import ConfigError
from e2vpt.model import PromptedModel

_FAMILIES: dict[str, type[PromptedModel]] = {}

FamilyClass = type[PromptedModel]


def register_family(name: str) -> Callable[[FamilyClass], FamilyClass]:
    """Class decorator: the family ``name`` wraps the backbones its ``accepts`` takes.
    Families are asked in registration order, so a more specific one registers first."""

    def decorator(cls: FamilyClass) -> FamilyClass:
        cls.family = name
        _FAMILIES[name] = cls
        return cls

    return decorator


def list_families() -> list[str]:
    return list(_FAMILIES)


def family_of(backbone: nn.Module) -> FamilyClass:
    """The family that wraps ``backbone``; none is an error naming what e2vpt wraps."""
    for cls in _FAMILIES.values():
        if cls.accepts(backbone):
            return cls
    raise ConfigError(
        f"backbone {type(backbone).__name__} is not a timm VisionTransformer or "
        "SwinTransformer; e2vpt wraps timm ViTs such as 'vit_base_patch16_224.augreg_in21k', "
        "Swins such as 'swin_base_patch4_window7_224.ms_in22k', or the bundled "
        "'demo_vit_cifar10'"
    )


def backbone_signature(backbone: nn.Module) -> dict[str, Any]:
    """Architecture facts a checkpoint must agree with (the backbone's family says which)."""
    return family_of(backbone).signature(backbone)
