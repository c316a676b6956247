"""The last ViT block, computed only where the head looks.

With class-token pooling the head reads one token of the last block's output, yet a
plain forward runs that block's query, attention output, projection and MLP for every
token — about 10/12 of a block's work (1/14 of ViT-B/16) wasted in the forward *and* the
backward. Keys and values still need every token (the class token attends to them all),
so this computes ``qkv``'s key/value rows for all tokens and everything else for the
class token alone (:func:`e2vpt.layers.attention.block_forward` with
``class_token_only``). The result equals ``block(x)[:, :1]`` up to float rounding.

Every sub-module is called, never read: when a method has replaced ``qkv`` (a LoRA
layer, any wrapper of a Linear), it runs on all tokens and the query rows of the class
token are taken from its output, so the method's change is part of the result.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from e2vpt.layers.attention import block_forward, is_timm_attention
from e2vpt.layers.kv_attention import KVPrompts


def supports_class_token_block(block: nn.Module) -> bool:
    """True for timm's standard pre-norm ``Block`` with timm's attention and a ``qkv``
    module (a Linear or a module wrapping one); other block types run in full."""
    if type(block) is not Block:
        return False
    attn = block.attn
    return is_timm_attention(attn) and isinstance(getattr(attn, "qkv", None), nn.Module)


def class_token_block_forward(
    block: Block, x: torch.Tensor, kv_prompts: KVPrompts | None = None
) -> torch.Tensor:
    """``block(x)[:, :1]`` (with ``kv_prompts`` in its attention, if given) without
    computing the other tokens' outputs: (B, 1, D)."""
    extra_kv = None if kv_prompts is None else kv_prompts.keys_values()
    return block_forward(block, x, extra_kv, class_token_only=True)
