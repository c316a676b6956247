"""The last ViT block, computed only where the head looks.

With class-token pooling the head reads one token of the last block's output, yet a
plain forward runs that block's query, attention output, projection and MLP for every
token — about 10/12 of a block's work (1/14 of ViT-B/16) wasted in the forward *and* the
backward. Keys and values still need every token (the class token attends to them all),
so this computes ``qkv``'s key/value rows for all tokens and everything else for the
class token alone. The result equals ``block(x)[:, :1]`` up to float rounding.

Every sub-module is called, never read: when a method has replaced ``qkv`` (a LoRA
layer, any wrapper of a Linear), it runs on all tokens and the query rows of the class
token are taken from its output, so the method's change is part of the result.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block
from torch import nn

from e2vpt.layers.kv_attention import KVPrompts


def supports_class_token_block(block: nn.Module) -> bool:
    """True for timm's standard pre-norm ``Block`` with a fused ``qkv`` attention (``qkv``
    a Linear or a module wrapping one); other block types run in full."""
    if type(block) is not Block:
        return False
    attn = block.attn
    return type(attn) is Attention and isinstance(getattr(attn, "qkv", None), nn.Module)


def _class_token_attention(
    base: Attention, h: torch.Tensor, kv_prompts: KVPrompts | None
) -> torch.Tensor:
    """Attention output of token 0 over all of ``h`` (plus any key-value prompts)."""
    B, N, C = h.shape
    heads, head_dim = base.num_heads, base.head_dim
    width = heads * head_dim
    query_in = h[:, :1]
    if type(base.qkv) is nn.Linear:  # plain: only the class token's query rows
        weight, bias = base.qkv.weight, base.qkv.bias
        q = F.linear(query_in, weight[:width], None if bias is None else bias[:width])
        kv = F.linear(h, weight[width:], None if bias is None else bias[width:])
    else:  # a method's wrapper (e.g. LoRA): run it as it is, keep what is needed
        qkv = base.qkv(h)
        q, kv = qkv[:, :1, :width], qkv[..., width:]
    q = q.reshape(B, 1, heads, head_dim).transpose(1, 2)
    k, v = kv.reshape(B, N, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = base.q_norm(q), base.k_norm(k)
    if kv_prompts is not None:
        k, v = kv_prompts.extend(k, v)
    out = F.scaled_dot_product_attention(
        q,
        k,
        v,
        dropout_p=base.attn_drop.p if base.training else 0.0,
        scale=getattr(base, "scale", 1.0 / math.sqrt(head_dim)),
    )
    out = base.norm(out.transpose(1, 2).reshape(B, 1, width))
    gate = getattr(base, "gate", None)
    if gate is not None:
        out = out * gate(query_in).sigmoid()
    return base.proj_drop(base.proj(out))


def class_token_block_forward(
    block: Block, x: torch.Tensor, kv_prompts: KVPrompts | None = None
) -> torch.Tensor:
    """``block(x)[:, :1]`` (with ``kv_prompts`` in its attention, if given) without
    computing the other tokens' outputs: (B, 1, D)."""
    h = block.norm1(x)
    attended = _class_token_attention(block.attn, h, kv_prompts)
    cls = x[:, :1] + block.drop_path1(block.ls1(attended))
    return cls + block.drop_path2(block.ls2(block.mlp(block.norm2(cls))))
