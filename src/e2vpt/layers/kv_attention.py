"""Key-value prompts (E²VPT): extra keys/values in every self-attention, queries untouched.

The prompts are parameters of the wrapped model; the attention is timm's own
``Attention`` called with them (its ``qkv``, norms and ``proj``), so no ViT code is
copied and the backbone is never rewired. Attention goes through
``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block, ResPostBlock
from torch import nn

from e2vpt.errors import ConfigError
from e2vpt.layers.settings import KV_INITS


def init_kv_prompt(num_heads: int, tokens: int, head_dim: int, how: str = "heads") -> torch.Tensor:
    """Kaiming-uniform (fan-in, a=0) key/value prompts of shape (heads, tokens, head_dim),
    one of the :data:`KV_INITS` ways. For ``width`` the (tokens, width) draw is split into
    heads the way ``qkv`` splits keys: width index = head · head_dim + j."""
    if how not in KV_INITS:
        raise ConfigError(f"kv_init must be one of {KV_INITS}, got {how!r}")
    if how == "heads":
        out = torch.empty(num_heads, tokens, head_dim)
        if tokens > 0:
            nn.init.kaiming_uniform_(out, a=0, mode="fan_in", nonlinearity="leaky_relu")
        return out
    flat = torch.empty(tokens, num_heads * head_dim)
    if tokens > 0:
        nn.init.kaiming_uniform_(flat, a=0, mode="fan_in", nonlinearity="leaky_relu")
    return flat.view(tokens, num_heads, head_dim).transpose(0, 1).contiguous()


class KVPrompts(nn.Module):
    """The ``tokens`` learnable keys (and values) of one attention, per head.

    They live in the wrapped model, not in the backbone: the model's forward hands
    them to :func:`attention_with_kv_prompts`, so the backbone's modules stay as timm
    built them and one backbone object can serve many models."""

    def __init__(
        self, num_heads: int, head_dim: int, tokens: int, shared: bool = True, init: str = "heads"
    ) -> None:
        super().__init__()
        self.tokens = tokens
        self.shared = shared
        shape_args = (num_heads, tokens, head_dim, init)
        self.key_prompt = nn.Parameter(init_kv_prompt(*shape_args))
        self.value_prompt: nn.Parameter | None = None
        if not shared:
            self.value_prompt = nn.Parameter(init_kv_prompt(*shape_args))

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B', heads, N, head_dim) keys and values with the prompts appended: N + tokens."""
        batch = k.shape[0]
        value_src = self.key_prompt if self.value_prompt is None else self.value_prompt
        key_prompt = self.key_prompt.to(k.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
        value_prompt = value_src.to(v.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
        return torch.cat([k, key_prompt], dim=2), torch.cat([v, value_prompt], dim=2)


def attention_with_kv_prompts(
    attn: Attention,
    x: torch.Tensor,
    kv: KVPrompts,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """timm ``Attention`` on ``x`` (B, N, C) with ``kv``'s keys/values appended; every
    sub-module of ``attn`` is called (``qkv`` may be a method's wrapper)."""
    B, N, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    k, v = kv.extend(k, v)
    if attn_mask is not None:
        # the prompt keys are visible to every query
        pad_value: bool | float = True if attn_mask.dtype == torch.bool else 0.0
        attn_mask = F.pad(attn_mask, (0, kv.tokens), value=pad_value)
    out = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=attn_mask,
        dropout_p=attn.attn_drop.p if attn.training else 0.0,
        scale=attn.scale if hasattr(attn, "scale") else 1.0 / math.sqrt(attn.head_dim),
    )
    out = out.transpose(1, 2).reshape(B, N, attn.num_heads * attn.head_dim)
    out = attn.norm(out)
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out))


# the block types whose forward is restated here with the prompts passed to attention:
# timm's pre-norm Block and post-norm ResPostBlock (their own sub-modules, in their order)
KV_BLOCKS = (Block, ResPostBlock)


def block_with_kv_prompts(block: nn.Module, x: torch.Tensor, kv: KVPrompts) -> torch.Tensor:
    """``block(x)`` with ``kv`` appended to its attention's keys and values."""
    if type(block) is ResPostBlock:
        x = x + block.drop_path1(block.norm1(attention_with_kv_prompts(block.attn, x, kv)))
        return x + block.drop_path2(block.norm2(block.mlp(x)))
    attended = attention_with_kv_prompts(block.attn, block.norm1(x), kv)
    x = x + block.drop_path1(block.ls1(attended))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def make_kv_prompts(
    blocks: list[nn.Module], tokens: int, shared: bool = True, init: str = "heads"
) -> nn.ModuleList:
    """One :class:`KVPrompts` per block (each block must be a timm ``Block`` or
    ``ResPostBlock`` with timm's standard ``Attention``)."""
    out = nn.ModuleList()
    for index, block in enumerate(blocks):
        attn = getattr(block, "attn", None)
        if type(block) not in KV_BLOCKS or not isinstance(attn, Attention):
            raise ConfigError(
                f"key-value prompts need timm's standard Block and Attention in every block; "
                f"block {index} is a {type(block).__name__} with {type(attn).__name__}. Use a "
                "plain ViT backbone or set kv_tokens=0"
            )
        out.append(KVPrompts(attn.num_heads, attn.head_dim, tokens, shared, init))
    return out
