"""Backbone families, one module each, found through the registry in ``base``.
Swin registers first: it is recognised by its class, ViT by its attributes."""

from e2vpt.families.base import (
    SharedPassFamily,
    TaskRows,
    backbone_signature,
    family_of,
    get_family,
    list_families,
    register_family,
)
from e2vpt.families.swin import PromptedSwin
from e2vpt.families.vit import PromptedViT

__all__ = [
    "PromptedSwin",
    "PromptedViT",
    "SharedPassFamily",
    "TaskRows",
    "backbone_signature",
    "family_of",
    "get_family",
    "list_families",
    "register_family",
]
