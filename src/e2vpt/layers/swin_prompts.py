"""Prompts inside Swin's window attention.

A Swin block attends within local windows, so a prompt cannot sit in the token grid.
Here visual prompts are image-level tokens joined to **every** window of their block:
each window attends over [prompts; its tokens], the prompts' own outputs are averaged
over the windows, and the MLP sees them like any other token. Key-value prompts are
appended to every window's keys and values. The relative-position bias and the
shifted-window mask get zero entries for the prompt positions (prompts have no
position and are visible from every window). timm's ``WindowAttention`` is called for
its ``qkv``, bias table and ``proj`` (never replaced: the prompts are the wrapped
model's); attention goes through ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import (
    SwinTransformerBlock,
    WindowAttention,
    window_partition,
    window_reverse,
)
from torch import nn

from e2vpt.layers.kv_attention import KVPrompts
from e2vpt.layers.prompts import VisualPrompts


def kv_prompts_for(attn: WindowAttention, tokens: int, shared: bool, init: str) -> KVPrompts:
    """Key-value prompts shaped for one window attention."""
    head_dim = attn.qkv.out_features // 3 // attn.num_heads
    return KVPrompts(attn.num_heads, head_dim, tokens, shared, init)


# per-sample key-value prompts: keys and values (batch, heads, tokens, head_dim), for
# batches whose samples bring different prompts (e2vpt.multitask)
SampleKV = tuple[torch.Tensor, torch.Tensor]


def window_attention_with_prompts(
    attn: WindowAttention,
    x: torch.Tensor,
    mask: torch.Tensor | None,
    visual_tokens: int,
    kv: KVPrompts | SampleKV | None,
    key_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """timm ``WindowAttention`` (its ``qkv``, bias table and ``proj``) over ``x``:
    (windows·B, visual_tokens + window_area, C), prompts first; ``mask``: timm's
    (windows, area, area) shifted-window mask or None; ``kv``: appended keys/values
    (one set for all, or per window row); ``key_valid``: (windows·B, keys) false where
    a key is padding."""
    B_, T, _ = x.shape
    p = visual_tokens
    m = 0 if kv is None else (kv.tokens if isinstance(kv, KVPrompts) else kv[0].shape[2])
    if T - p != attn.window_area:
        raise ValueError(f"expected {p} prompts + {attn.window_area} window tokens, got {T}")
    qkv = attn.qkv(x).reshape(B_, T, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    if isinstance(kv, KVPrompts):
        k, v = kv.extend(k, v)
    elif kv is not None:
        k, v = torch.cat([k, kv[0].to(k.dtype)], dim=2), torch.cat([v, kv[1].to(v.dtype)], dim=2)
    # zero bias / no masking wherever a prompt is involved
    bias = F.pad(attn._get_rel_pos_bias(), (p, m, p, 0))  # (1, heads, T, T + m)
    if mask is not None:
        windows = mask.shape[0]
        mask = F.pad(mask, (p, m, p, 0)).to(bias.dtype)  # (windows, T, T + m)
        bias = (bias.unsqueeze(1) + mask.unsqueeze(1).unsqueeze(0)).expand(
            B_ // windows, -1, -1, -1, -1
        )
        bias = bias.reshape(B_, attn.num_heads, T, T + m)
    if key_valid is not None:
        hidden = torch.zeros(key_valid.shape, dtype=bias.dtype, device=bias.device)
        hidden = hidden.masked_fill(~key_valid, float("-inf"))[:, None, None, :]
        bias = bias + hidden
    out = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=bias.to(q.dtype),
        dropout_p=attn.attn_drop.p if attn.training else 0.0,
        scale=attn.scale,
    )
    out = out.transpose(1, 2).reshape(B_, T, -1)
    return attn.proj_drop(attn.proj(out))


def _attention_with_prompts(
    block: SwinTransformerBlock,
    x: torch.Tensor,
    prompts: torch.Tensor,
    kv: KVPrompts | SampleKV | None,
    prompt_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's ``SwinTransformerBlock._attn`` (shift, pad, partition, attend, merge) with
    the prompts joined to every window; returns (grid output, prompt output).
    ``prompt_valid``: (B, prompts + kv tokens), false for a sample's padding."""
    B, H, W, C = x.shape
    p = prompts.shape[1]
    win_h, win_w = block.window_size
    shift = block.shift_size
    has_shift = any(shift)
    if has_shift:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    pad_h = (win_h - H % win_h) % win_h
    pad_w = (win_w - W % win_w) % win_w
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    _, Hp, Wp, _ = x.shape
    windows = window_partition(x, block.window_size).view(-1, block.window_area, C)
    num_windows = windows.shape[0] // B
    mask = block.get_attn_mask(x) if getattr(block, "dynamic_mask", False) else block.attn_mask
    joined = torch.cat([prompts.repeat_interleave(num_windows, dim=0), windows], dim=1)
    if kv is not None and not isinstance(kv, KVPrompts):  # per sample → per window
        kv = (kv[0].repeat_interleave(num_windows, 0), kv[1].repeat_interleave(num_windows, 0))
    key_valid = None
    if prompt_valid is not None:
        grid_keys = prompt_valid.new_ones(B, block.window_area)
        key_valid = torch.cat([prompt_valid[:, :p], grid_keys, prompt_valid[:, p:]], dim=1)
        key_valid = key_valid.repeat_interleave(num_windows, dim=0)
    out = window_attention_with_prompts(block.attn, joined, mask, p, kv, key_valid)
    prompt_out = out[:, :p].reshape(B, num_windows, p, C).mean(dim=1)
    grid = window_reverse(out[:, p:].reshape(-1, win_h, win_w, C), block.window_size, Hp, Wp)
    grid = grid[:, :H, :W, :]
    if has_shift:
        grid = torch.roll(grid, shifts=shift, dims=(1, 2))
    return grid, prompt_out


def prompted_block_forward(
    block: SwinTransformerBlock,
    x: torch.Tensor,
    prompts: torch.Tensor,
    kv: KVPrompts | SampleKV | None = None,
    prompt_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Swin block on the (B, H, W, C) grid and the (B, p, C) prompts (p may be 0),
    with ``kv`` in its attention and the block's own norms, MLP and drop paths;
    ``prompt_valid`` (B, p + kv tokens) marks each sample's padding (false)."""
    B, H, W, C = x.shape
    p = prompts.shape[1]
    normed = block.norm1(prompts)
    grid_out, prompt_out = _attention_with_prompts(block, block.norm1(x), normed, kv, prompt_valid)
    x = x + block.drop_path1(grid_out)
    prompts = prompts + block.drop_path1(prompt_out)
    seq = torch.cat([prompts, x.reshape(B, H * W, C)], dim=1)
    seq = seq + block.drop_path2(block.mlp(block.norm2(seq)))
    return seq[:, p:].reshape(B, H, W, C), seq[:, :p]


class StagePrompts(nn.Module):
    """Visual prompts for a Swin: per stage, that stage's width. Deep: a set for every
    block; shallow: one set at the first block, carried through stage 0 and dropped at
    the first patch merging (the next stage has another width)."""

    def __init__(
        self,
        depths: list[int],
        dims: list[int],
        tokens: int,
        deep: bool,
        patch_size: tuple[int, int],
        dropout: float,
        project: bool,
    ) -> None:
        super().__init__()
        self.tokens = tokens
        self.deep = deep
        stages = list(zip(depths, dims, strict=True)) if deep else [(1, dims[0])]
        self.stages = nn.ModuleList(
            VisualPrompts(depth, tokens, dim, patch_size, dropout, project) for depth, dim in stages
        )

    def at(self, stage: int, block: int, batch_size: int) -> torch.Tensor | None:
        """Fresh prompts entering (stage, block), or None to keep the carried ones."""
        if self.deep:
            return self.stages[stage](block, batch_size)
        if stage == 0 and block == 0:
            return self.stages[0](0, batch_size)
        return None
