"""Linear probing: only the classification head learns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from e2vpt.methods.base import MethodConfig, register_method

if TYPE_CHECKING:
    from e2vpt.model import PromptedModel


@dataclass
class LinearConfig(MethodConfig):
    name: ClassVar[str] = "linear"


@register_method(LinearConfig, "head only (linear probing)")
def apply_linear(model: PromptedModel, config: LinearConfig) -> None:
    model.freeze_backbone()
