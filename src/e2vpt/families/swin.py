"""The Swin family: timm ``SwinTransformer``, with prompts inside its window attention
(:mod:`e2vpt.layers.swin_prompts`)."""

from __future__ import annotations

from typing import Any

import torch
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from e2vpt.errors import ConfigError
from e2vpt.families.base import register_family
from e2vpt.layers.swin_prompts import StagePrompts, kv_prompts_for, prompted_block_forward
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
