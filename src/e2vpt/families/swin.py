"""The Swin family: timm ``SwinTransformer``, with prompts inside its window attention
(:mod:`e2vpt.layers.swin_prompts`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from e2vpt.errors import ConfigError
from e2vpt.families.base import TaskRows, register_family
from e2vpt.layers.kv_attention import KVPrompts, kv_tokens, per_sample_kv
from e2vpt.layers.swin_prompts import (
    SampleKV,
    StagePrompts,
    kv_prompts_for,
    prompted_block_forward,
)
from e2vpt.model import PromptedModel

SWIN_POOLS = ("avg",)


@register_family("swin")
class PromptedSwin(PromptedModel):
    """A timm ``SwinTransformer`` with prompts inside its window attention
    (:mod:`e2vpt.layers.swin_prompts`). Features: the final norm, then the average over
    the last stage's tokens (prompts included, as for ViT average pooling)."""

    # key-value prompts were once parameters of the backbone's attention modules
    legacy_renames = (
        (
            r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\.attn\.((key|value)_prompt)$",
            r"kv_prompts.\1.\2.\3",
        ),
    )
    # a shared multi-task pass pools as the models do: the average over every token
    shared_pools: ClassVar[tuple[str, ...]] = ("avg",)
    pools: ClassVar[tuple[str, ...]] = SWIN_POOLS
    description: ClassVar[str] = "timm SwinTransformer (v1, e.g. swin_base_patch4_window7_224)"

    @classmethod
    def accepts(cls, backbone: nn.Module) -> bool:
        return isinstance(backbone, SwinTransformer)

    @classmethod
    def signature(cls, backbone: nn.Module) -> dict[str, Any]:
        blocks = [stage.blocks[0] for stage in backbone.layers]
        return {
            "class": type(backbone).__name__,
            "stage_dims": [int(block.dim) for block in blocks],
            "depths": [len(stage.blocks) for stage in backbone.layers],
            "num_heads": [int(block.attn.num_heads) for block in blocks],
            "window_size": list(blocks[0].window_size),
            "patch_size": list(backbone.patch_embed.patch_size),
            "img_size": list(backbone.patch_embed.img_size or ()),
        }

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        backbone_name: str | None = None,
        global_pool: str | None = None,
        head_init: str = "kaiming",
    ) -> None:
        super().__init__(backbone, num_classes, backbone_name, head_init)
        pool = global_pool or "avg"
        if pool not in SWIN_POOLS:
            raise ConfigError(f"Swin backbones pool by averaging; got global_pool={pool!r}")
        self.global_pool = pool
        self.stage_dims = [int(stage.blocks[0].dim) for stage in backbone.layers]
        self.depths = [len(stage.blocks) for stage in backbone.layers]
        self.embed_dim = self.stage_dims[0]
        self.num_blocks = sum(self.depths)
        self.stage_prompts: StagePrompts | None = None
        self.kv_prompts: nn.ModuleList | None = None  # per stage, one KVPrompts per block
        self._make_head(int(backbone.num_features))

    def add_visual_prompts(
        self,
        tokens: int,
        deep: bool,
        dropout: float,
        project: bool = False,
        mask_segments: int | None = None,
        segment_layout: str = "interleaved",
        train_masks: bool = False,
    ) -> None:
        # pruning masks are not offered on Swin (pruning/importance.py refuses it)
        self.stage_prompts = StagePrompts(
            self.depths, self.stage_dims, tokens, deep, self.patch_size, dropout, project
        )

    def add_kv_prompts(self, tokens: int, shared: bool, init: str = "heads") -> None:
        if tokens > 0:
            self.kv_prompts = nn.ModuleList(
                nn.ModuleList(kv_prompts_for(b.attn, tokens, shared, init) for b in stage.blocks)
                for stage in self.backbone.layers
            )

    def backbone_blocks(self) -> list[nn.Module]:
        return [block for stage in self.backbone.layers for block in stage.blocks]

    def final_norm(self) -> nn.Module:
        return self.backbone.norm

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        bb = self.backbone
        x = bb.patch_embed(x)
        prompts: torch.Tensor | None = None
        for s, stage in enumerate(bb.layers):
            x = stage.downsample(x)
            prompts = None  # a new width: the previous stage's prompts do not carry over
            for b, block in enumerate(stage.blocks):
                if self.stage_prompts is not None:
                    fresh = self.stage_prompts.at(s, b, x.shape[0])
                    prompts = fresh.to(x.dtype) if fresh is not None else prompts
                kv = None if self.kv_prompts is None else self.kv_prompts[s][b]
                if prompts is not None:
                    x, prompts = self._run_block(prompted_block_forward, block, x, prompts, kv)
                elif kv is not None:  # key-value prompts alone: no visual prompt tokens
                    none = x.new_zeros(x.shape[0], 0, x.shape[-1])
                    x, _ = self._run_block(prompted_block_forward, block, x, none, kv)
                else:
                    x = self._run_block(block, x)
        x = bb.norm(x)
        return x, (bb.norm(prompts) if prompts is not None else None)

    def forward_pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        grid, prompts = self.forward_features(x)
        tokens = grid.flatten(1, 2)
        if prompts is not None:
            tokens = torch.cat([prompts, tokens], dim=1)
        return tokens.mean(dim=1)

    # -- many tasks in one pass (e2vpt.multitask) ------------------------------------
    @classmethod
    def multitask_pass(
        cls, backbone: nn.Module, groups: Sequence[TaskRows], images: torch.Tensor
    ) -> torch.Tensor:
        """Each sample's pooled features (B, D) from one pass of ``backbone``: its task's
        prompts joined to its windows, padded to the batch's most and masked; pooled as
        each task's model pools (the mean over its prompts and the last grid)."""
        bb = backbone
        x = bb.patch_embed(images)
        carried = x.new_zeros(x.shape[0], 0, x.shape[-1])
        counts = [0] * len(groups)
        for s, stage in enumerate(bb.layers):
            x = stage.downsample(x)
            if s > 0:  # a new width: no prompt carries over
                carried, counts = x.new_zeros(x.shape[0], 0, x.shape[-1]), [0] * len(groups)
            for b, block in enumerate(stage.blocks):
                prompts, counts = _sample_prompts(groups, s, b, carried, counts, x)
                kv = [(_kv_at(model, s, b), rows) for model, rows in groups]
                extra_kv, valid = _sample_kv(block.attn, kv, groups, counts, x)
                if extra_kv is None and prompts.shape[1] == 0:
                    x = block(x)
                    continue
                x, carried = prompted_block_forward(block, x, prompts, extra_kv, valid)
        return _pool(bb.norm(x), bb.norm(carried), groups, counts)


def _kv_at(model: PromptedSwin, stage: int, block: int) -> KVPrompts | None:
    return None if model.kv_prompts is None else model.kv_prompts[stage][block]


def _sample_prompts(
    groups: Sequence[TaskRows],
    stage: int,
    block: int,
    carried: torch.Tensor,
    counts: list[int],
    x: torch.Tensor,
) -> tuple[torch.Tensor, list[int]]:
    """The prompts entering (stage, block), each sample its task's (fresh ones, else
    the carried outputs), zero-padded to the batch's most: (B, slots, C), and each
    task's count."""
    fresh: dict[int, torch.Tensor] = {}
    counts = list(counts)
    for task, (model, rows) in enumerate(groups):
        prompts = model.stage_prompts
        new = None if prompts is None else prompts.at(stage, block, len(rows))
        if new is not None:
            fresh[task], counts[task] = new.to(x.dtype), new.shape[1]
    slots = max(counts)
    out = x.new_zeros(x.shape[0], slots, x.shape[-1])
    out[:, : carried.shape[1]] = carried[:, :slots]
    for task, new in fresh.items():
        out[groups[task][1]] = F.pad(new, (0, 0, 0, slots - new.shape[1]))
    return out, counts


def _sample_kv(
    attn: nn.Module,
    prompts_of_rows: list[tuple[KVPrompts | None, list[int]]],
    groups: Sequence[TaskRows],
    counts: list[int],
    x: torch.Tensor,
) -> tuple[SampleKV | None, torch.Tensor]:
    """Each sample's key-value prompts of one window attention, padded to the batch's
    most (None: no task has any), and which prompts (visual, then key-value) each
    sample sees: (B, visual slots + key-value slots)."""
    kv_counts = [kv_tokens(prompts) for prompts, _ in prompts_of_rows]
    slots, kv_slots = max(counts), max(kv_counts)
    valid = torch.ones(x.shape[0], slots + kv_slots, dtype=torch.bool, device=x.device)
    for (_, rows), count, kv_count in zip(groups, counts, kv_counts, strict=True):
        valid[rows, count:slots] = False
        valid[rows, slots + kv_count :] = False
    if kv_slots == 0:
        return None, valid
    head_dim = attn.qkv.out_features // 3 // attn.num_heads
    return per_sample_kv(prompts_of_rows, kv_slots, attn.num_heads, head_dim, x), valid


def _pool(
    grid: torch.Tensor, prompts: torch.Tensor, groups: Sequence[TaskRows], counts: list[int]
) -> torch.Tensor:
    """The mean over the normed last grid and each sample's own prompts (its padding
    left out), as :meth:`PromptedSwin.forward_pre_logits`."""
    grid = grid.flatten(1, 2)
    total = grid.sum(dim=1)
    size = torch.full((grid.shape[0], 1), grid.shape[1], dtype=grid.dtype, device=grid.device)
    if prompts.shape[1]:
        keep = torch.zeros(*prompts.shape[:2], 1, dtype=grid.dtype, device=grid.device)
        for (_, rows), count in zip(groups, counts, strict=True):
            keep[rows, :count] = 1
            size[rows] += count
        total = total + (prompts * keep).sum(dim=1)
    return total / size
