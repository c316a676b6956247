"""E²VPT (Han et al. 2023): deep visual prompts + key-value prompts in every attention.

The visual prompts carry the token and segment masks that pruning (a later
stage) sets; they are buffers, so the optimizer never sees them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from e2vpt.methods.base import ConfigError, MethodConfig, register_method

if TYPE_CHECKING:
    from e2vpt.model import PromptedModel


@dataclass
class E2VPTConfig(MethodConfig):
    name: ClassVar[str] = "e2vpt"
    visual_tokens: int = 10  # deep visual prompt tokens per block
    kv_tokens: int = 5  # key-value prompt tokens per attention
    shared_kv: bool = True  # one tensor serves as key and value prompt (official default)
    visual_dropout: float = 0.1  # dropout on the visual prompts
    mask_segments: int = 16  # R: segments per visual token for segment-wise pruning

    def validate(self) -> None:
        super().validate()
        if self.mask_segments < 1:
            raise ConfigError(f"e2vpt: mask_segments must be >= 1, got {self.mask_segments}")


@register_method(E2VPTConfig, "deep visual prompts + key-value prompts + head (E²VPT)")
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
    )
    model.add_kv_prompts(tokens=config.kv_tokens, shared=config.shared_kv)
