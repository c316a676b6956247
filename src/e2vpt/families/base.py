"""The registry of backbone families: each is a :class:`~e2vpt.model.PromptedModel`
subclass in its own module, registered by name. ``wrap`` and ``load`` ask the registry
which family takes a backbone, so adding a family touches its module and one line.

A family whose tasks can share one backbone pass (:class:`~e2vpt.multitask.MultiTaskModel`)
says so with :class:`SharedPassFamily`'s two members: the pooling that pass computes and
the pass itself, so ``MultiTaskModel`` knows no family."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from e2vpt.errors import ConfigError
from e2vpt.model import PromptedModel

_FAMILIES: dict[str, type[PromptedModel]] = {}

FamilyClass = type[PromptedModel]

# the samples of one task in a shared batch: the task's model and the batch rows it owns
TaskRows = tuple[PromptedModel, list[int]]


@runtime_checkable
class SharedPassFamily(Protocol):
    """A family whose tasks share one pass of a frozen backbone, each sample with its own
    task's prompts (padded to the batch's largest and masked out)."""

    # the pooling(s) the shared pass computes, once for every task
    shared_pools: ClassVar[tuple[str, ...]]

    @classmethod
    def multitask_pass(
        cls, backbone: nn.Module, groups: Sequence[TaskRows], images: torch.Tensor
    ) -> torch.Tensor:
        """Normalised images (B, 3, S, S) → each sample's pooled features (B, D), equal to
        its task's ``forward_pre_logits`` alone."""
        ...


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


def get_family(name: str) -> FamilyClass:
    """The family registered as ``name``."""
    if name not in _FAMILIES:
        raise ConfigError(f"no backbone family {name!r}; the families are {list_families()}")
    return _FAMILIES[name]


def family_of(backbone: nn.Module) -> FamilyClass:
    """The family that wraps ``backbone``, by its class; none is a one-line error naming
    the class and what each family wraps."""
    for cls in _FAMILIES.values():
        if cls.accepts(backbone):
            return cls
    kind = type(backbone)
    families = "; ".join(f"{name}: {cls.description}" for name, cls in _FAMILIES.items())
    raise ConfigError(
        f"backbone class {kind.__name__} ({kind.__module__}) is not supported; e2vpt wraps "
        f"{families}, or the bundled 'demo_vit_cifar10'"
    )


def backbone_signature(backbone: nn.Module) -> dict[str, Any]:
    """Architecture facts a checkpoint must agree with (the backbone's family says which)."""
    return family_of(backbone).signature(backbone)
