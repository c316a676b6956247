"""E²VPT (Han et al. 2023): deep visual prompts + key-value prompts in every attention.

The visual prompts carry the token and segment masks that pruning uses. As in the
official code they learn with the prompts by default (``train_masks``); with
``train_masks=False`` they are fixed buffers at one until pruning sets them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from e2vpt.layers.settings import KV_INITS, MAX_LAYER_WIDTH, MAX_PROMPT_TOKENS, SEGMENT_LAYOUTS
from e2vpt.methods.base import ConfigError, MethodConfig, register_method
from e2vpt.settings import setting

if TYPE_CHECKING:
    from torch import nn

    from e2vpt.model import PromptedModel


@dataclass
class E2VPTConfig(MethodConfig):
    name: ClassVar[str] = "e2vpt"
    official_options: ClassVar[dict[str, Any]] = {
        "visual_dropout": 0.1,
        "mask_segments": 16,
        "segment_layout": "interleaved",
        "train_masks": True,
        "kv_init": "heads",
    }
    visual_tokens: int = setting(
        10, "deep visual prompt tokens per block", maximum=MAX_PROMPT_TOKENS
    )
    kv_tokens: int = setting(5, "key-value prompt tokens per attention", maximum=MAX_PROMPT_TOKENS)
    shared_kv: bool = setting(True, "one tensor serves as key and value prompt (official default)")
    visual_dropout: float = setting(0.1, "dropout on the visual prompts")
    kv_init: str = setting(
        "heads", "heads: Kaiming-uniform on (heads, m, head_dim) | width: on (m, d)"
    )
    mask_segments: int = setting(
        16, "R: segments per visual token for segment-wise pruning", maximum=MAX_LAYER_WIDTH
    )
    segment_layout: str = setting(
        "interleaved", "interleaved: dim j → segment j mod R | contiguous"
    )
    train_masks: bool = setting(True, "token/segment masks learn with the prompts (official code)")
    default_base_lr: ClassVar[dict[str, float]] = {"sgd": 0.25, "adamw": 0.04}
    size_fields: ClassVar[tuple[str, ...]] = ("visual_tokens", "kv_tokens", "shared_kv")

    def tunes(self, model: nn.Module, name: str) -> bool:
        # the masks are parameters only when they train (train_masks), buffers otherwise
        return name.startswith(("head.", "visual_prompts.", "stage_prompts.", "kv_prompts."))

    @classmethod
    def size_options(cls, visual_tokens: int | None, kv_tokens: int | None) -> dict[str, Any]:
        given = {"visual_tokens": visual_tokens, "kv_tokens": kv_tokens}
        return {k: v for k, v in given.items() if v is not None}

    @classmethod
    def legacy_options(cls, values: dict[str, Any]) -> dict[str, Any]:
        # how e2vpt trained and pruned before the official choices became the defaults
        return {"kv_init": "width", "segment_layout": "contiguous", "train_masks": False}

    def validate(self) -> None:
        super().validate()
        if self.mask_segments < 1:
            raise ConfigError(f"e2vpt: mask_segments must be >= 1, got {self.mask_segments}")
        if self.kv_init not in KV_INITS:
            raise ConfigError(f"e2vpt: kv_init must be one of {KV_INITS}, got {self.kv_init!r}")
        if self.segment_layout not in SEGMENT_LAYOUTS:
            raise ConfigError(
                f"e2vpt: segment_layout must be one of {SEGMENT_LAYOUTS}, "
                f"got {self.segment_layout!r}"
            )


@register_method(
    E2VPTConfig,
    "deep visual prompts + key-value prompts + head (E²VPT)",
    rank=30,
    paper_anchors={"natural": 80.01, "specialized": 84.43, "structured": 57.39, "fgvc": 89.22},
)
def apply_e2vpt(model: PromptedModel, config: E2VPTConfig) -> None:
    model.freeze_backbone()
    if config.mask_segments > model.embed_dim:
        raise ConfigError(
            f"e2vpt: mask_segments={config.mask_segments} exceeds the model width "
            f"{model.embed_dim}; use at most {model.embed_dim}"
        )
    model.add_visual_prompts(
        tokens=config.visual_tokens,
        deep=True,
        dropout=config.visual_dropout,
        mask_segments=config.mask_segments,
        segment_layout=config.segment_layout,
        train_masks=config.train_masks,
    )
    model.add_kv_prompts(tokens=config.kv_tokens, shared=config.shared_kv, init=config.kv_init)
