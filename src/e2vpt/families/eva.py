"""The Eva family: timm's ``Eva`` class, which implements DINOv3 (``vit_*_dinov3``),
EVA-02 (``eva02_*``), Perception Encoder (``vit_pe_*``) and the RoPE ViTs
(``vit_*_rope_*``): rotary position embeddings on the image tokens, SwiGLU MLPs, layer
scale, register tokens, fused or split ``qkv`` with Eva's separate q/v biases.

Everything but the positions is the ViT family's (:class:`~e2vpt.families.vit.PromptedViT`):
visual prompts after the prefix tokens (CLS and registers), key-value prompts in every
attention, the pooling (the backbone's own: CLS, average with ``fc_norm``, or PE's
attention pool), the class-token shortcut, pruning and the shared multi-task pass. What
differs is where the positions enter: an absolute table (if any) is added by timm's
``_pos_embed`` before the prompts go in, and the rotary embedding is applied inside
every attention (:class:`~e2vpt.layers.attention.Rotary`) to the image tokens only. The
prefix tokens, the visual prompts and the key-value prompts are not rotated: prompts have
no position, as the class and register tokens have none in timm's Eva, so a key-value
prompt is a key of the attention's own space (after ``k_norm``), compared with every
query by content alone."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from timm.models.eva import Eva
from torch import nn

from e2vpt.errors import ConfigError
from e2vpt.families.base import register_family
from e2vpt.families.vit import PromptedViT
from e2vpt.layers.attention import Rotary, supports_block_forward


@register_family("eva")
class PromptedEva(PromptedViT):
    """A timm ``Eva`` used as it is, with prompts inserted around its own blocks and the
    rotary embedding applied to the image tokens behind the prompts."""

    legacy_renames = ()
    description: ClassVar[str] = (
        "timm Eva (DINOv3 vit_*_dinov3, EVA-02 eva02_*, Perception Encoder vit_pe_*, "
        "RoPE ViTs vit_*_rope_*)"
    )

    @classmethod
    def accepts(cls, backbone: nn.Module) -> bool:
        return isinstance(backbone, Eva)

    @classmethod
    def signature(cls, backbone: nn.Module) -> dict[str, Any]:
        rope = getattr(backbone, "rope", None)
        return {
            **super().signature(backbone),
            "rope": None if rope is None else type(rope).__name__,
        }

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        backbone_name: str | None = None,
        global_pool: str | None = None,
        head_init: str = "kaiming",
    ) -> None:
        for index, block in enumerate(backbone.blocks):
            if not supports_block_forward(block):
                raise ConfigError(
                    f"Eva block {index} is a {type(block).__name__} with "
                    f"{type(getattr(block, 'attn', None)).__name__}; e2vpt runs timm's "
                    "EvaBlock or EvaBlockPostNorm with EvaAttention or AttentionRope"
                )
        super().__init__(backbone, num_classes, backbone_name, global_pool, head_init)

    @classmethod
    def embed(cls, backbone: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """timm's patch embedding and ``_pos_embed`` (which also returns the rotary
        embedding, for the image size of ``images`` on a dynamic-size backbone)."""
        x, rope = backbone._pos_embed(backbone.patch_embed(images))
        return backbone.norm_pre(x), rope

    @classmethod
    def rotary(cls, backbone: nn.Module, positions: Any, layer: int, start: int) -> Rotary | None:
        if positions is None:
            return None
        # RoPE-Mixed learns one embedding per block
        embed = positions[layer] if getattr(backbone, "rope_mixed", False) else positions
        return Rotary(embed, start)
