"""Backbone families, one module each, found through the registry in ``base``; each is
recognised by its timm class (Eva is not a ``VisionTransformer``, Swin neither)."""

from e2vpt.families.base import (
    SharedPassFamily,
    TaskRows,
    backbone_signature,
    family_of,
    get_family,
    list_families,
    register_family,
)
from e2vpt.families.eva import PromptedEva
from e2vpt.families.swin import PromptedSwin
from e2vpt.families.vit import PromptedViT

__all__ = [
    "PromptedEva",
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
