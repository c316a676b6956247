"""Key-value prompts (E²VPT): extra keys/values in every self-attention, queries untouched.

Wraps timm's own ``Attention`` (reusing its ``qkv``, norms and ``proj``) so no ViT
code is copied; attention goes through ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import Attention
from torch import nn

from e2vpt.errors import ConfigError

# heads: Kaiming-uniform on the (heads, m, head_dim) tensor, fan-in m·head_dim, bound
# √(6/(m·head_dim)) (the official E²VPT code); width: on the (m, d) view, bound √(6/d)
KV_INITS = ("heads", "width")


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


class KVPromptAttention(nn.Module):
    """timm ``Attention`` plus ``tokens`` learnable keys/values per head."""

    def __init__(
        self, base: Attention, tokens: int, shared: bool = True, init: str = "heads"
    ) -> None:
        super().__init__()
        self.base = base
        self.tokens = tokens
        self.shared = shared
        shape_args = (base.num_heads, tokens, base.head_dim, init)
        self.key_prompt = nn.Parameter(init_kv_prompt(*shape_args))
        self.value_prompt: nn.Parameter | None = None
        if not shared:
            self.value_prompt = nn.Parameter(init_kv_prompt(*shape_args))

    def extend_keys_values(
        self, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, heads, N, head_dim) keys and values with the prompts appended: N + tokens."""
        batch = k.shape[0]
        value_src = self.key_prompt if self.value_prompt is None else self.value_prompt
        key_prompt = self.key_prompt.to(k.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
        value_prompt = value_src.to(v.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
        return torch.cat([k, key_prompt], dim=2), torch.cat([v, value_prompt], dim=2)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        if is_causal:
            raise NotImplementedError("key-value prompts do not support causal attention")
        base = self.base
        B, N, _ = x.shape
        gate = base.gate(x).sigmoid() if getattr(base, "gate", None) is not None else None
        qkv = base.qkv(x).reshape(B, N, 3, base.num_heads, base.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = base.q_norm(q), base.k_norm(k)
        k, v = self.extend_keys_values(k, v)
        if attn_mask is not None:
            # the prompt keys are visible to every query
            pad_value: bool | float = True if attn_mask.dtype == torch.bool else 0.0
            attn_mask = F.pad(attn_mask, (0, self.tokens), value=pad_value)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=base.attn_drop.p if base.training else 0.0,
            scale=base.scale if hasattr(base, "scale") else 1.0 / math.sqrt(base.head_dim),
        )
        out = out.transpose(1, 2).reshape(B, N, base.num_heads * base.head_dim)
        out = base.norm(out)
        if gate is not None:
            out = out * gate
        return base.proj_drop(base.proj(out))


def add_kv_prompts(
    backbone: nn.Module, tokens: int, shared: bool = True, init: str = "heads"
) -> None:
    """Replace every block's ``attn`` by a :class:`KVPromptAttention` around it."""
    if tokens == 0:
        return
    for index, block in enumerate(backbone.blocks):
        attn = getattr(block, "attn", None)
        if not isinstance(attn, Attention):
            raise ConfigError(
                f"key-value prompts need timm's standard Attention in every block; block "
                f"{index} has {type(attn).__name__}. Use a plain ViT backbone or set kv_tokens=0"
            )
        block.attn = KVPromptAttention(attn, tokens, shared, init)
