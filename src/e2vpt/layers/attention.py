"""timm's ViT attention and block, restated once with the extras prompt tuning needs.

Every forward e2vpt runs through a ViT or Eva block goes through :func:`attention_forward`
and :func:`block_forward`: the family's own forward, the class-token-only last block
and the shared multi-task pass. Each extra is optional, and with none of them the result
is timm's ``Attention.forward`` / ``Block.forward`` (Eva: ``EvaAttention`` /
``AttentionRope`` and ``EvaBlock`` / ``EvaBlockPostNorm`` with timm's rotary embedding):

- extra keys and values (key-value prompts), appended after the projection, the head
  split, the q/k norms and the rotary embedding; the queries are untouched, so the output
  has as many tokens as the input;
- an attention mask, as timm's (bool: true = attend, or additive), e.g. the padding of
  tasks with fewer prompts in a shared batch;
- class-token-only: just the class token's query row is computed (keys and values still
  come from every token), all that class-token pooling reads of the last block;
- rotary position embeddings (:class:`Rotary`) for the image tokens only: the tokens
  before them (class, registers, visual prompts) and the key-value prompts have no
  position, as timm leaves its prefix tokens unrotated.

Every sub-module is called, never read (a method may have replaced ``qkv`` with a
wrapper), and every attribute timm's forward honours is honoured: ``q_norm``/``k_norm``,
``gate``, ``norm``, ``attn_drop``/``proj_drop``, ``fused_attn`` (fused: one
``F.scaled_dot_product_attention``, the attention matrix never built here), and Eva's
separate q/v biases, split ``q_proj``/``k_proj``/``v_proj`` and grouped key/value heads.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import Attention, AttentionRope, apply_rot_embed_cat
from timm.models.eva import EvaAttention, EvaBlock, EvaBlockPostNorm
from timm.models.vision_transformer import Block, ResPostBlock
from torch import nn

from e2vpt.errors import ConfigError

# keys and values appended to one attention's: (heads, m, head_dim) shared by every
# sample, or (batch, heads, m, head_dim), one set per sample
ExtraKV = tuple[torch.Tensor, torch.Tensor]

# the block types whose forward block_forward restates, in their own sub-modules' order:
# pre-norm (timm's Block, EvaBlock) and post-norm (ResPostBlock, EvaBlockPostNorm)
PRE_NORM_BLOCKS = (Block, EvaBlock)
POST_NORM_BLOCKS = (ResPostBlock, EvaBlockPostNorm)
BLOCK_TYPES = PRE_NORM_BLOCKS + POST_NORM_BLOCKS

# the attention forwards attention_forward restates
ATTENTION_FORWARDS = (Attention.forward, EvaAttention.forward, AttentionRope.forward)


class Rotary(NamedTuple):
    """timm's rotary embedding of the image tokens (``Eva._pos_embed``'s second output,
    one block's where it differs per block) and the index of the first image token: the
    tokens before it (prefix and visual prompts) are not rotated."""

    embed: torch.Tensor
    start: int


def is_timm_attention(attn: nn.Module | None) -> bool:
    """True for timm's ``Attention``, ``EvaAttention`` or ``AttentionRope``, or a subclass
    that keeps its forward (one that only sets options, e.g. a gate), whose forward
    :func:`attention_forward` restates."""
    return attn is not None and type(attn).forward in ATTENTION_FORWARDS


def attention_forward(
    attn: nn.Module,
    x: torch.Tensor,
    extra_kv: ExtraKV | None = None,
    attn_mask: torch.Tensor | None = None,
    class_token_only: bool = False,
    rope: Rotary | None = None,
) -> torch.Tensor:
    """timm ``attn(x, attn_mask)`` on ``x`` (B, N, C) with ``extra_kv`` appended to its
    keys and values. ``attn_mask`` covers the N keys of ``x`` (the extra keys are then
    visible to every query) or all N + m keys. ``class_token_only``: the output of token
    0 alone, (B, 1, C'). ``rope``: the image tokens' rotary embedding."""
    batch, tokens, _ = x.shape
    query_in = x[:, :1] if class_token_only else x
    gate = attn.gate(query_in).sigmoid() if getattr(attn, "gate", None) is not None else None
    q, k, v = _project(attn, x, class_token_only)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        half = bool(getattr(attn, "rotate_half", False))
        q, k = _rotate(q, rope, half).type_as(v), _rotate(k, rope, half).type_as(v)
    groups = getattr(attn, "num_kv_groups", 1)
    if groups > 1:  # grouped key/value heads, expanded to the query heads as timm does
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
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


def _rotate(t: torch.Tensor, rope: Rotary, half: bool) -> torch.Tensor:
    """``t`` (B, heads, n, head_dim) with its tokens from ``rope.start`` on rotated (a
    query of the class token alone has none)."""
    if t.shape[2] <= rope.start:
        return t
    start = rope.start
    rotated = apply_rot_embed_cat(t[:, :, start:], rope.embed, half=half)
    return torch.cat([t[:, :, :start], rotated], dim=2)


def _heads(t: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """(B, n, heads · head_dim) → (B, heads, n, head_dim)."""
    return t.reshape(t.shape[0], t.shape[1], heads, head_dim).transpose(1, 2)


def _separate_bias(attn: nn.Module) -> torch.Tensor | None:
    """Eva's fused-``qkv`` bias kept beside it (learned q and v biases, a zero k bias)."""
    q_bias = getattr(attn, "q_bias", None)
    if q_bias is None:
        return None
    return torch.cat((q_bias, attn.k_bias, attn.v_bias))


def _qkv_rows(attn: nn.Module, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Output features ``start:stop`` of a plain-Linear ``qkv`` (with Eva's bias)."""
    weight, bias = attn.qkv.weight[start:stop], attn.qkv.bias
    bias = None if bias is None else bias[start:stop]
    separate = _separate_bias(attn)
    if separate is not None:
        bias = separate[start:stop] if bias is None else bias + separate[start:stop]
    return F.linear(x, weight, bias)


def _qkv(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``attn.qkv`` on every token as timm computes it (Eva: with its separate bias)."""
    separate = _separate_bias(attn)
    if separate is None:
        return attn.qkv(x)
    if type(attn.qkv) is nn.Linear and not getattr(attn, "qkv_bias_separate", False):
        return _qkv_rows(attn, x, 0, attn.qkv.out_features)
    return attn.qkv(x) + separate  # a method's wrapper: called, then the bias added


def _project(
    attn: nn.Module, x: torch.Tensor, class_token_only: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values (B, heads, tokens, head_dim; keys and values with their
    own head count where grouped) from ``attn``'s projections; with
    ``class_token_only`` the class token's query alone, and where ``qkv`` is a plain
    Linear only its key/value rows run on the other tokens."""
    heads, head_dim = attn.num_heads, attn.head_dim
    kv_heads = getattr(attn, "num_kv_heads", heads)
    if getattr(attn, "qkv", None) is None:  # Eva's split projections
        q = attn.q_proj(x[:, :1] if class_token_only else x)
        k, v = attn.k_proj(x), attn.v_proj(x)
        return (
            _heads(q, heads, head_dim),
            _heads(k, kv_heads, head_dim),
            _heads(v, kv_heads, head_dim),
        )
    if not class_token_only:
        batch, tokens, _ = x.shape
        qkv = _qkv(attn, x).reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return q, k, v
    width = heads * head_dim
    if type(attn.qkv) is nn.Linear:  # plain: the class token's query rows only
        q, kv = _qkv_rows(attn, x[:, :1], 0, width), _qkv_rows(attn, x, width, 3 * width)
    else:  # a method's wrapper (e.g. LoRA): run it as it is, keep what is needed
        qkv = _qkv(attn, x)
        q, kv = qkv[:, :1, :width], qkv[..., width:]
    k, v = kv.chunk(2, dim=-1)
    return _heads(q, heads, head_dim), _heads(k, heads, head_dim), _heads(v, heads, head_dim)


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
    attn: nn.Module,
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
    """True where :func:`block_forward` restates the block: timm's ``Block`` /
    ``ResPostBlock`` or Eva's ``EvaBlock`` / ``EvaBlockPostNorm`` with timm's attention."""
    return type(block) in BLOCK_TYPES and is_timm_attention(getattr(block, "attn", None))


def _layer_scale(block: nn.Module, branch: int, t: torch.Tensor) -> torch.Tensor:
    """A pre-norm block's layer scale on branch 1 (attention) or 2 (MLP): timm's
    ``ls1``/``ls2`` modules, Eva's ``gamma_1``/``gamma_2`` (None: no scale)."""
    scale = getattr(block, f"ls{branch}", None)
    if scale is not None:
        return scale(t)
    gamma = getattr(block, f"gamma_{branch}", None)
    return t if gamma is None else gamma * t


def block_forward(
    block: nn.Module,
    x: torch.Tensor,
    extra_kv: ExtraKV | None = None,
    attn_mask: torch.Tensor | None = None,
    class_token_only: bool = False,
    rope: Rotary | None = None,
) -> torch.Tensor:
    """timm ``block(x)`` with :func:`attention_forward`'s extras in its attention;
    ``class_token_only``: the class token's output alone, (B, 1, D)."""
    residual = x[:, :1] if class_token_only else x
    extras = (extra_kv, attn_mask, class_token_only, rope)
    if type(block) in POST_NORM_BLOCKS:
        attended = attention_forward(block.attn, x, *extras)
        x = residual + block.drop_path1(block.norm1(attended))
        return x + block.drop_path2(block.norm2(block.mlp(x)))
    attended = attention_forward(block.attn, block.norm1(x), *extras)
    x = residual + block.drop_path1(_layer_scale(block, 1, attended))
    return x + block.drop_path2(_layer_scale(block, 2, block.mlp(block.norm2(x))))
