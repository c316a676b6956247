"""Prompts inside Swin's window attention.

A Swin block attends within local windows, so a prompt cannot sit in the token grid.
Here visual prompts are image-level tokens joined to **every** window of their block:
each window attends over [prompts; its tokens], the prompts' own outputs are averaged
over the windows, and the MLP sees them like any other token. Key-value prompts are
appended to every window's keys and values. The relative-position bias and the
shifted-window mask get zero entries for the prompt positions (prompts have no
position and are visible from every window). timm's ``WindowAttention`` is reused for
its ``qkv``, bias table and ``proj``; attention goes through
``F.scaled_dot_product_attention``.
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

from e2vpt.layers.kv_attention import init_kv_prompt
from e2vpt.layers.prompts import VisualPrompts


class PromptedWindowAttention(nn.Module):
    """timm ``WindowAttention`` + ``tokens`` key-value prompts + room for visual prompts."""

    def __init__(
        self, base: WindowAttention, tokens: int = 0, shared: bool = True, init: str = "heads"
    ) -> None:
        super().__init__()
        self.base = base
        self.tokens = tokens
        self.shared = shared
        head_dim = base.qkv.out_features // 3 // base.num_heads
        shape_args = (base.num_heads, tokens, head_dim, init)
        self.key_prompt: nn.Parameter | None = None
        self.value_prompt: nn.Parameter | None = None
        if tokens > 0:
            self.key_prompt = nn.Parameter(init_kv_prompt(*shape_args))
            if not shared:
                self.value_prompt = nn.Parameter(init_kv_prompt(*shape_args))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, visual_tokens: int = 0
    ) -> torch.Tensor:
        """``x``: (windows·B, visual_tokens + window_area, C), prompts first;
        ``mask``: timm's (windows, area, area) shifted-window mask or None."""
        base = self.base
        B_, T, _ = x.shape
        p, m = visual_tokens, self.tokens
        if T - p != base.window_area:
            raise ValueError(f"expected {p} prompts + {base.window_area} window tokens, got {T}")
        qkv = base.qkv(x).reshape(B_, T, 3, base.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.key_prompt is not None:
            value_src = self.key_prompt if self.value_prompt is None else self.value_prompt
            k = torch.cat([k, self.key_prompt.to(k.dtype).expand(B_, -1, -1, -1)], dim=2)
            v = torch.cat([v, value_src.to(v.dtype).expand(B_, -1, -1, -1)], dim=2)
        # zero bias / no masking wherever a prompt is involved
        bias = F.pad(base._get_rel_pos_bias(), (p, m, p, 0))  # (1, heads, T, T + m)
        if mask is not None:
            windows = mask.shape[0]
            mask = F.pad(mask, (p, m, p, 0)).to(bias.dtype)  # (windows, T, T + m)
            bias = (bias.unsqueeze(1) + mask.unsqueeze(1).unsqueeze(0)).expand(
                B_ // windows, -1, -1, -1, -1
            )
            bias = bias.reshape(B_, base.num_heads, T, T + m)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=bias.to(q.dtype),
            dropout_p=base.attn_drop.p if base.training else 0.0,
            scale=base.scale,
        )
        out = out.transpose(1, 2).reshape(B_, T, -1)
        return base.proj_drop(base.proj(out))


def _attention_with_prompts(
    block: SwinTransformerBlock, x: torch.Tensor, prompts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's ``SwinTransformerBlock._attn`` (shift, pad, partition, attend, merge) with
    the prompts joined to every window; returns (grid output, prompt output)."""
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
    out = block.attn(joined, mask=mask, visual_tokens=p)
    prompt_out = out[:, :p].reshape(B, num_windows, p, C).mean(dim=1)
    grid = window_reverse(out[:, p:].reshape(-1, win_h, win_w, C), block.window_size, Hp, Wp)
    grid = grid[:, :H, :W, :]
    if has_shift:
        grid = torch.roll(grid, shifts=shift, dims=(1, 2))
    return grid, prompt_out


def prompted_block_forward(
    block: SwinTransformerBlock, x: torch.Tensor, prompts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Swin block on the (B, H, W, C) grid and the (B, p, C) prompts, with the
    block's own norms, MLP and drop paths."""
    B, H, W, C = x.shape
    p = prompts.shape[1]
    grid_out, prompt_out = _attention_with_prompts(block, block.norm1(x), block.norm1(prompts))
    x = x + block.drop_path1(grid_out)
    prompts = prompts + block.drop_path1(prompt_out)
    seq = torch.cat([prompts, x.reshape(B, H * W, C)], dim=1)
    seq = seq + block.drop_path2(block.mlp(block.norm2(seq)))
    return seq[:, p:].reshape(B, H, W, C), seq[:, :p]


def prompt_attention_of(block: SwinTransformerBlock) -> PromptedWindowAttention:
    """The block's attention as a :class:`PromptedWindowAttention` (wrapped once)."""
    if not isinstance(block.attn, PromptedWindowAttention):
        block.attn = PromptedWindowAttention(block.attn)
    return block.attn


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
