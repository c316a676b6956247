"""timm's ViT attention and block, restated once with the extras prompt tuning needs.

Every forward e2vpt runs through a ViT block goes through :func:`attention_forward`
and :func:`block_forward`: the family's own forward, the class-token-only last block
and the shared multi-task pass. Each extra is optional, and with none of them the result
is timm's ``Attention.forward`` / ``Block.forward``:

- extra keys and values (key-value prompts), appended after the projection and the head
  split; the queries are untouched, so the output has as many tokens as the input;
- an attention mask, as timm's (bool: true = attend, or additive), e.g. the padding of
  tasks with fewer prompts in a shared batch;
- class-token-only: just the class token's query row is computed (keys and values still
  come from every token), all that class-token pooling reads of the last block.

Every sub-module is called, never read (a method may have replaced ``qkv`` with a
wrapper), and every attribute timm's forward honours is honoured: ``q_norm``/``k_norm``,
``gate``, ``norm``, ``attn_drop``/``proj_drop`` and ``fused_attn`` (fused: one
``F.scaled_dot_product_attention``, the attention matrix never built here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block, ResPostBlock
from torch import nn

from e2vpt.errors import ConfigError

# keys and values appended to one attention's: (heads, m, head_dim) shared by every
# sample, or (batch, heads, m, head_dim), one set per sample
ExtraKV = tuple[torch.Tensor, torch.Tensor]

# the block types whose forward block_forward restates: timm's pre-norm Block and
# post-norm ResPostBlock (their own sub-modules, in their order)
BLOCK_TYPES = (Block, ResPostBlock)


def is_timm_attention(attn: nn.Module) -> bool:
    """True for timm's ``Attention`` or a subclass that keeps its forward (one that only
    sets options, e.g. a gate), whose forward :func:`attention_forward` restates."""
    return isinstance(attn, Attention) and type(attn).forward is Attention.forward


def attention_forward(
    attn: Attention,
    x: torch.Tensor,
    extra_kv: ExtraKV | None = None,
    attn_mask: torch.Tensor | None = None,
    class_token_only: bool = False,
) -> torch.Tensor:
    """timm ``attn(x, attn_mask)`` on ``x`` (B, N, C) with ``extra_kv`` appended to its
    keys and values. ``attn_mask`` covers the N keys of ``x`` (the extra keys are then
    visible to every query) or all N + m keys. ``class_token_only``: the output of token
    0 alone, (B, 1, C')."""
    batch, tokens, _ = x.shape
    query_in = x[:, :1] if class_token_only else x
    gate = attn.gate(query_in).sigmoid() if getattr(attn, "gate", None) is not None else None
    q, k, v = _project(attn, x, class_token_only)
    q, k = attn.q_norm(q), attn.k_norm(k)
    extra = 0
    if extra_kv is not None:
        keys, values = extra_kv
        extra = keys.shape[-2]
        k = torch.cat([k, keys.to(k.dtype).expand(batch, -1, -1, -1)], dim=2)
        v = torch.cat([v, values.to(v.dtype).expand(batch, -1, -1, -1)], dim=2)
    mask = _mask_over_keys(attn_mask, tokens, extra, class_token_only)
    out = _attend(attn, q, k, v, mask)
    out = out.transpose(1, 2).reshape(batch, query_in.shape[1], attn.num_heads * attn.head_dim)
    out = attn.norm(out)
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out))


def _project(
    attn: Attention, x: torch.Tensor, class_token_only: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values (B, heads, tokens, head_dim) from ``attn.qkv``; with
    ``class_token_only`` the class token's query alone, and where ``qkv`` is a plain
    Linear only its key/value rows run on the other tokens."""
    batch, tokens, _ = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    if not class_token_only:
        qkv = attn.qkv(x).reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return q, k, v
    width = heads * head_dim
    if type(attn.qkv) is nn.Linear:  # plain: the class token's query rows only
        weight, bias = attn.qkv.weight, attn.qkv.bias
        q = F.linear(x[:, :1], weight[:width], None if bias is None else bias[:width])
        kv = F.linear(x, weight[width:], None if bias is None else bias[width:])
    else:  # a method's wrapper (e.g. LoRA): run it as it is, keep what is needed
        qkv = attn.qkv(x)
        q, kv = qkv[:, :1, :width], qkv[..., width:]
    q = q.reshape(batch, 1, heads, head_dim).transpose(1, 2)
    k, v = kv.reshape(batch, tokens, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def _mask_over_keys(
    mask: torch.Tensor | None, tokens: int, extra: int, class_token_only: bool
) -> torch.Tensor | None:
    """``mask`` over all ``tokens + extra`` keys (extra keys it lacks: visible), its
    query rows cut to the class token's where only that query is computed."""
    if mask is None:
        return None
    if mask.shape[-1] == tokens and extra:
        mask = F.pad(mask, (0, extra), value=True if mask.dtype == torch.bool else 0.0)
    elif mask.shape[-1] != tokens + extra:
        raise ConfigError(
            f"the attention mask covers {mask.shape[-1]} keys; the attention has {tokens} "
            f"tokens and {extra} extra keys"
        )
    if class_token_only and mask.dim() >= 2 and mask.shape[-2] > 1:
        mask = mask[..., :1, :]
    return mask


def _attend(
    attn: Attention,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """softmax(q·kᵀ·scale + mask)·v as timm computes it: fused where ``attn.fused_attn``
    says so, else the explicit product with ``attn_drop`` on the weights."""
    if getattr(attn, "fused_attn", True):
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=attn.attn_drop.p if attn.training else 0.0
        )
    scores = (q * attn.scale) @ k.transpose(-2, -1)
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        scores = scores + mask
    return attn.attn_drop(scores.softmax(dim=-1)) @ v


def supports_block_forward(block: nn.Module) -> bool:
    """True where :func:`block_forward` restates the block: timm's ``Block`` or
    ``ResPostBlock`` with timm's attention."""
    return type(block) in BLOCK_TYPES and is_timm_attention(getattr(block, "attn", None))


def block_forward(
    block: nn.Module,
    x: torch.Tensor,
    extra_kv: ExtraKV | None = None,
    attn_mask: torch.Tensor | None = None,
    class_token_only: bool = False,
) -> torch.Tensor:
    """timm ``block(x)`` with :func:`attention_forward`'s extras in its attention;
    ``class_token_only``: the class token's output alone, (B, 1, D)."""
    residual = x[:, :1] if class_token_only else x
    if type(block) is ResPostBlock:
        attended = attention_forward(block.attn, x, extra_kv, attn_mask, class_token_only)
        x = residual + block.drop_path1(block.norm1(attended))
        return x + block.drop_path2(block.norm2(block.mlp(x)))
    h = block.norm1(x)
    attended = attention_forward(block.attn, h, extra_kv, attn_mask, class_token_only)
    x = residual + block.drop_path1(block.ls1(attended))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
