"""VPT (Jia et al. 2022): learnable visual prompt tokens, shallow or deep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from e2vpt.layers.settings import MAX_PROMPT_TOKENS
from e2vpt.methods.base import MethodConfig, register_method
from e2vpt.settings import setting

if TYPE_CHECKING:
    from torch import nn

    from e2vpt.model import PromptedModel


@dataclass
class VPTConfig(MethodConfig):
    """``tokens`` prompts after the prefix tokens; ``deep`` gives every block its own set.

    Prompt dropout defaults to 0.0 for shallow and deep alike, as the official VPT code
    trains them."""

    name: ClassVar[str] = "vpt"
    official_options: ClassVar[dict[str, Any]] = {"dropout": 0.0}
    tokens: int = setting(10, "prompt tokens per set", maximum=MAX_PROMPT_TOKENS)
    deep: bool = setting(False, "a prompt set per block (VPT-deep)")
    dropout: float = setting(0.0, "prompt dropout (the official VPT code: 0.0)")
    project: bool = setting(False, "optional linear projection of the prompts (off in the paper)")
    default_base_lr: ClassVar[dict[str, float]] = {"sgd": 0.25, "adamw": 0.04}
    size_fields: ClassVar[tuple[str, ...]] = ("tokens",)

    def tunes(self, model: nn.Module, name: str) -> bool:
        return name.startswith(("head.", "visual_prompts.", "stage_prompts."))

    @classmethod
    def size_options(cls, visual_tokens: int | None, kv_tokens: int | None) -> dict[str, Any]:
        return {} if visual_tokens is None else {"tokens": visual_tokens}

    @classmethod
    def legacy_options(cls, values: dict[str, Any]) -> dict[str, Any]:
        # before the official value became the default, VPT-deep dropped 10 % of prompts
        return {"dropout": 0.1 if values.get("deep") else 0.0}

    @property
    def method_name(self) -> str:
        return "vpt-deep" if self.deep else "vpt-shallow"


def _apply_vpt(model: PromptedModel, config: VPTConfig) -> None:
    model.freeze_backbone()
    model.add_visual_prompts(
        tokens=config.tokens,
        deep=config.deep,
        dropout=float(config.dropout),
        project=config.project,
    )


register_method(
    VPTConfig,
    "input prompts + head (VPT-shallow)",
    "vpt-shallow",
    {"deep": False},
    rank=20,
    paper_anchors={"natural": 76.81, "specialized": 79.66, "structured": 46.98, "fgvc": 84.62},
)(_apply_vpt)
register_method(
    VPTConfig,
    "per-layer prompts + head (VPT-deep)",
    "vpt-deep",
    {"deep": True},
    rank=21,
    paper_anchors={"natural": 78.48, "specialized": 82.43, "structured": 54.98, "fgvc": 89.11},
)(_apply_vpt)
