"""Key-value prompts (E²VPT): extra keys/values in every self-attention, queries untouched.

The prompts are parameters of the wrapped model; the attention that takes them is
:func:`e2vpt.layers.attention.attention_forward` (timm's ``Attention`` called for its
``qkv``, norms, gate and ``proj``), so the backbone is never rewired.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import Attention
from torch import nn

from e2vpt.errors import ConfigError
from e2vpt.layers.attention import (
    BLOCK_TYPES,
    ExtraKV,
    attention_forward,
    block_forward,
    supports_block_forward,
)
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
    :meth:`keys_values` to the attention (:mod:`e2vpt.layers.attention`), so the
    backbone's modules stay as timm built them and one backbone object can serve many
    models."""

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

    def keys_values(self) -> ExtraKV:
        """The key and value prompts, (heads, tokens, head_dim) each (shared: one tensor)."""
        value = self.key_prompt if self.value_prompt is None else self.value_prompt
        return self.key_prompt, value

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B', heads, N, head_dim) keys and values with the prompts appended: N + tokens."""
        batch = k.shape[0]
        key_src, value_src = self.keys_values()
        key_prompt = key_src.to(k.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
        value_prompt = value_src.to(v.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
        return torch.cat([k, key_prompt], dim=2), torch.cat([v, value_prompt], dim=2)


# the block types key-value prompts go into (kept under its old name)
KV_BLOCKS = BLOCK_TYPES


def attention_with_kv_prompts(
    attn: Attention,
    x: torch.Tensor,
    kv: KVPrompts,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """timm ``Attention`` on ``x`` (B, N, C) with ``kv``'s keys/values appended
    (:func:`~e2vpt.layers.attention.attention_forward`)."""
    return attention_forward(attn, x, kv.keys_values(), attn_mask)


def block_with_kv_prompts(block: nn.Module, x: torch.Tensor, kv: KVPrompts) -> torch.Tensor:
    """``block(x)`` with ``kv`` appended to its attention's keys and values."""
    return block_forward(block, x, kv.keys_values())


def per_sample_kv(
    prompts_of_rows: Sequence[tuple[KVPrompts | None, list[int]]],
    slots: int,
    heads: int,
    head_dim: int,
    like: torch.Tensor,
) -> ExtraKV:
    """Each sample's key-value prompts for one attention, zero-padded to ``slots``:
    keys and values (B, heads, slots, head_dim), B and dtype those of ``like``, for a
    batch whose samples bring different prompts (the padding is masked by the caller)."""
    keys = like.new_zeros(like.shape[0], heads, slots, head_dim)
    values = torch.zeros_like(keys)
    for prompts, rows in prompts_of_rows:
        if prompts is None:
            continue
        key, value = prompts.keys_values()
        keys[rows, :, : prompts.tokens] = key.to(like.dtype)
        values[rows, :, : prompts.tokens] = value.to(like.dtype)
    return keys, values


def kv_tokens(prompts: KVPrompts | None) -> int:
    """How many key-value prompts ``prompts`` adds (none: 0)."""
    return 0 if prompts is None else int(prompts.tokens)


def make_kv_prompts(
    blocks: list[nn.Module], tokens: int, shared: bool = True, init: str = "heads"
) -> nn.ModuleList:
    """One :class:`KVPrompts` per block (each block must be one :func:`block_forward`
    restates: timm's ``Block`` / ``ResPostBlock`` or Eva's blocks, with timm's attention)."""
    out = nn.ModuleList()
    for index, block in enumerate(blocks):
        attn = getattr(block, "attn", None)
        if not supports_block_forward(block):
            inside = "" if attn is None else f" with {type(attn).__name__}"
            raise ConfigError(
                "key-value prompts need timm's standard blocks (Block, ResPostBlock, EvaBlock) "
                f"and attention in every block; block {index} is a {type(block).__name__}"
                f"{inside}. Use a plain ViT backbone or set kv_tokens=0"
            )
        out.append(KVPrompts(attn.num_heads, attn.head_dim, tokens, shared, init))
    return out
