"""The last ViT (or Eva) block, computed only where the head looks.

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
from torch import nn

from e2vpt.layers.attention import PRE_NORM_BLOCKS, Rotary, block_forward, is_timm_attention
from e2vpt.layers.kv_attention import KVPrompts


def supports_class_token_block(block: nn.Module) -> bool:
    """True for a pre-norm block (timm's ``Block``, Eva's ``EvaBlock``) with timm's
    attention whose projections are modules (a Linear or a module wrapping one); other
    block types run in full."""
    if type(block) not in PRE_NORM_BLOCKS:
        return False
    attn = block.attn
    projections = [getattr(attn, "qkv", None)] + [getattr(attn, "q_proj", None)]
    return is_timm_attention(attn) and any(isinstance(p, nn.Module) for p in projections)


def class_token_block_forward(
    block: nn.Module,
    x: torch.Tensor,
    kv_prompts: KVPrompts | None = None,
    rope: Rotary | None = None,
) -> torch.Tensor:
    """``block(x)[:, :1]`` (with ``kv_prompts`` in its attention, if given, and the
    image tokens' ``rope``) without computing the other tokens' outputs: (B, 1, D)."""
    extra_kv = None if kv_prompts is None else kv_prompts.keys_values()
    return block_forward(block, x, extra_kv, class_token_only=True, rope=rope)
