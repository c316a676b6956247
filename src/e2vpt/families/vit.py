"""The ViT family: timm ``VisionTransformer`` and its subclasses (DeiT distilled, the
bundled demo backbone), with visual prompts inserted after the prefix tokens and
key-value prompts in every attention. The prompts, the pooling and the head live in the
wrapper and enter through its forward; the backbone's modules are called, never replaced.

DeiT distilled (``VisionTransformerDistilled``) pools as timm does: the mean of the class
and distillation tokens (its ``forward_head(pre_logits=True)``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer, global_pool_nlc
from torch import nn

from e2vpt.errors import ConfigError
from e2vpt.families.base import TaskRows, register_family
from e2vpt.layers.attention import ExtraKV, Rotary, block_forward, supports_block_forward
from e2vpt.layers.class_token_block import class_token_block_forward, supports_class_token_block
from e2vpt.layers.kv_attention import (
    KVPrompts,
    kv_tokens,
    make_kv_prompts,
    per_sample_kv,
)
from e2vpt.layers.prompts import VisualPrompts
from e2vpt.model import PromptedModel

VIT_POOLS = ("token", "avg", "avg-fc-norm", "map", "max", "avgmax")


def is_distilled(backbone: nn.Module) -> bool:
    """DeiT distilled: token pooling reads the class and the distillation token."""
    return isinstance(backbone, VisionTransformerDistilled)


def heads_of(block: nn.Module) -> int:
    """A block's attention heads (its ``attn``'s; a parallel block keeps them elsewhere)."""
    attn = getattr(block, "attn", None)
    found = (
        attn if attn is not None else next(m for m in block.modules() if hasattr(m, "num_heads"))
    )
    return int(found.num_heads)


def has_class_token(backbone: nn.Module) -> bool:
    flag = getattr(backbone, "has_class_token", None)
    return bool(flag) if flag is not None else getattr(backbone, "cls_token", None) is not None


def pool_norm_moves(backbone: nn.Module, pool: str) -> bool:
    """avg-fc-norm on a backbone without its own fc_norm: its final norm (pretrained
    affine kept) normalises the pooled features instead of every token."""
    return pool == "avg-fc-norm" and isinstance(getattr(backbone, "fc_norm", None), nn.Identity)


@register_family("vit")
class PromptedViT(PromptedModel):
    """A timm ``VisionTransformer`` used as it is, with prompts inserted around its own
    blocks (after the prefix tokens: CLS and any register tokens)."""

    # key-value prompts were once parameters of the backbone's attention modules
    legacy_renames = (
        (r"^backbone\.blocks\.(\d+)\.attn\.((key|value)_prompt)$", r"kv_prompts.\1.\2"),
    )
    # a shared multi-task pass pools by the class token (its last block: that token only)
    shared_pools: ClassVar[tuple[str, ...]] = ("token",)
    pools: ClassVar[tuple[str, ...]] = VIT_POOLS
    prunable_prompts: ClassVar[bool] = True
    description: ClassVar[str] = (
        "timm VisionTransformer and subclasses (supervised, MAE, MoCo v3, DINOv2, CLIP, "
        "SigLIP, AIMv2, DeiT distilled)"
    )

    @classmethod
    def accepts(cls, backbone: nn.Module) -> bool:
        return isinstance(backbone, VisionTransformer)

    @classmethod
    def signature(cls, backbone: nn.Module) -> dict[str, Any]:
        return {
            "class": type(backbone).__name__,
            "embed_dim": int(backbone.embed_dim),
            "depth": len(backbone.blocks),
            "num_heads": heads_of(backbone.blocks[0]),
            "patch_size": list(backbone.patch_embed.patch_size),
            "num_prefix_tokens": int(backbone.num_prefix_tokens),
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
        self.global_pool = self._set_pooling(backbone, global_pool)
        # DeiT distilled: token pooling averages the class and distillation tokens
        self.distilled = is_distilled(backbone)
        self.embed_dim = int(backbone.embed_dim)
        self.num_blocks = len(backbone.blocks)
        self.num_prefix_tokens = int(backbone.num_prefix_tokens)
        # class-token pooling: the last block computes only the class token's output
        # (layers/class_token_block.py); off = every token, as a plain timm forward
        self.class_token_shortcut = True
        # MAE-style avg-fc-norm on a backbone without fc_norm: the final norm is applied
        # after the pooling instead of to every token
        self.norm_after_pool = pool_norm_moves(backbone, self.global_pool)
        self.kv_prompts: nn.ModuleList | None = None  # one KVPrompts per block
        self._make_head(self.embed_dim)

    @staticmethod
    def _set_pooling(backbone: nn.Module, requested: str | None) -> str:
        """The backbone's convention (CLS; MAE: mean of the non-CLS tokens
        then ``fc_norm``), or what the user asks for."""
        pool = requested or getattr(backbone, "e2vpt_pool_convention", None)
        pool = pool or backbone.global_pool or "token"
        if pool not in VIT_POOLS:
            raise ConfigError(f"unknown pooling {pool!r} for a ViT; choose one of {VIT_POOLS}")
        if pool == "token" and not has_class_token(backbone):
            raise ConfigError(
                f"{type(backbone).__name__} has no class token, so 'token' pooling would read "
                "a patch or prompt; use global_pool='avg' (or 'map' where the model has one)"
            )
        if pool == "map" and getattr(backbone, "attn_pool", None) is None:
            raise ConfigError("'map' pooling needs a backbone with an attention-pool head")
        return pool

    def release_backbone_head(self) -> None:
        # timm's own call: the classifier goes, and an attention pool the pooling skips
        pool = self.global_pool
        self.backbone.reset_classifier(0, global_pool="avg" if pool == "avg-fc-norm" else pool)

    def rename_legacy(self, name: str) -> str:
        if self.norm_after_pool and name.startswith("backbone.fc_norm."):
            # avg-fc-norm once moved the final norm into fc_norm's place
            return "backbone.norm." + name[len("backbone.fc_norm.") :]
        return super().rename_legacy(name)

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
        self.visual_prompts = VisualPrompts(
            num_layers=self.num_blocks if deep else 1,
            tokens=tokens,
            dim=self.embed_dim,
            patch_size=self.patch_size,
            dropout=dropout,
            project=project,
            mask_segments=mask_segments,
            segment_layout=segment_layout,
            train_masks=train_masks,
        )

    def add_kv_prompts(self, tokens: int, shared: bool, init: str = "heads") -> None:
        if tokens > 0:
            self.kv_prompts = make_kv_prompts(list(self.backbone.blocks), tokens, shared, init)

    def backbone_blocks(self) -> list[nn.Module]:
        return list(self.backbone.blocks)

    def final_norm(self) -> nn.Module:
        # the pooling-side norm where the backbone has one, else norm
        fc_norm = getattr(self.backbone, "fc_norm", None)
        if fc_norm is not None and not isinstance(fc_norm, nn.Identity):
            return fc_norm
        return self.backbone.norm

    # -- forward ---------------------------------------------------------------------
    def _insert_prompts(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        prompts = self.visual_prompts
        if prompts is None or prompts.tokens == 0:
            return x
        deep = prompts.num_layers > 1
        if layer > 0 and not deep:
            return x
        new = prompts(layer, x.shape[0]).to(x.dtype)
        npt = self.num_prefix_tokens
        # block 0: insert after the prefix tokens; deep blocks: replace the last outputs
        # (every layer gets as many prompts as the first, so the count is the new one's)
        rest = x[:, npt:] if layer == 0 else x[:, npt + new.shape[1] :]
        return torch.cat([x[:, :npt], new, rest], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every token's features after the final norm, as timm's ``forward_features``
        (prompt tokens included): (B, prefix + prompts + patches, D)."""
        return self._forward_tokens(x, class_token_only=False)

    def forward_class_token(self, x: torch.Tensor) -> torch.Tensor:
        """What class-token pooling reads: the last block computes the class token's
        output alone, (B, 1, D) (:mod:`e2vpt.layers.class_token_block`), where the block is
        timm's standard one; otherwise every token, as ``forward_features``."""
        return self._forward_tokens(x, class_token_only=True)

    @classmethod
    def embed(cls, backbone: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Images → the tokens entering block 0 (B, prefix + patches, D), and what
        :meth:`rotary` needs of the positions (a ViT: nothing)."""
        bb = backbone
        return bb.norm_pre(bb.patch_drop(bb._pos_embed(bb.patch_embed(images)))), None

    @classmethod
    def rotary(cls, backbone: nn.Module, positions: Any, layer: int, start: int) -> Rotary | None:
        """The rotary embedding block ``layer`` applies to the image tokens, which start
        at token ``start`` (a ViT has none: its positions were added by ``embed``)."""
        return None

    def _forward_tokens(self, x: torch.Tensor, class_token_only: bool) -> torch.Tensor:
        bb = self.backbone
        x, positions = self.embed(bb, x)
        image_tokens = x.shape[1] - self.num_prefix_tokens
        last = len(bb.blocks) - 1
        for index, block in enumerate(bb.blocks):
            x = self._insert_prompts(x, index)
            kv = _kv_at(self, index)
            rope = self.rotary(bb, positions, index, x.shape[1] - image_tokens)
            if index == last and class_token_only and supports_class_token_block(block):
                x = self._run_block(class_token_block_forward, block, x, kv, rope)
            elif kv is not None or rope is not None:
                extra_kv = None if kv is None else kv.keys_values()
                x = self._run_block(block_forward, block, x, extra_kv, None, False, rope)
            else:
                x = self._run_block(block, x)
        return x if self.norm_after_pool else bb.norm(x)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens → pooled features, as timm's ``forward_head(pre_logits=True)`` with this
        model's pooling (the backbone's own pooling settings are left as they are)."""
        bb = self.backbone
        pool = self.global_pool
        if pool == "map" or (pool == "token" and self.distilled):
            return bb.forward_head(tokens, pre_logits=True)
        x = global_pool_nlc(
            tokens,
            pool_type="avg" if pool == "avg-fc-norm" else pool,
            num_prefix_tokens=self.num_prefix_tokens,
            reduce_include_prefix=bool(getattr(bb, "pool_include_prefix", False)),
        )
        x = bb.norm(x) if self.norm_after_pool else bb.fc_norm(x)
        return bb.head_drop(x)

    def forward_pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.class_token_shortcut and self.global_pool == "token" and not self.distilled
        features = self.forward_class_token(x) if shortcut else self.forward_features(x)
        return self.pool(features)

    # -- many tasks in one pass (e2vpt.multitask) ------------------------------------
    @classmethod
    def multitask_pass(
        cls, backbone: nn.Module, groups: Sequence[TaskRows], images: torch.Tensor
    ) -> torch.Tensor:
        """Each sample's class-token features (B, D) from one pass of ``backbone``, with
        its own task's visual and key-value prompts: tasks with fewer are padded to the
        batch's most and the padding is masked out of every attention."""
        bb = backbone
        for block in bb.blocks:
            if not supports_block_forward(block):
                raise ConfigError(
                    "MultiTaskModel needs timm's standard blocks (Block, ResPostBlock, "
                    f"EvaBlock) and attention; the backbone has {type(block).__name__}"
                )
        counts = [_visual_prompt_count(model) for model, _ in groups]
        slots, npt = max(counts), int(bb.num_prefix_tokens)
        x, positions = cls.embed(bb, images)
        # which of the tokens each sample attends to: prefix, its own prompts, patches
        token_valid = x.new_ones(x.shape[0], x.shape[1] + slots, dtype=torch.bool)
        for (_, rows), count in zip(groups, counts, strict=True):
            token_valid[rows, npt + count : npt + slots] = False
        tokens_padded = min(counts) < slots
        last = len(bb.blocks) - 1
        for layer, block in enumerate(bb.blocks):
            if slots:
                x = _insert_sample_prompts(x, groups, counts, layer, npt)
            kv = [(_kv_at(model, layer), rows) for model, rows in groups]
            extra_kv, valid, kv_padded = _sample_kv(block.attn, kv, token_valid, x)
            mask = valid[:, None, None, :] if tokens_padded or kv_padded else None
            only = layer == last and supports_class_token_block(block) and not is_distilled(bb)
            rope = cls.rotary(bb, positions, layer, npt + slots)
            x = block_forward(block, x, extra_kv, mask, class_token_only=only, rope=rope)
        return groups[0][0].pool(bb.norm(x))


def _visual_prompt_count(model: PromptedViT) -> int:
    """How many visual prompts the model inserts (after pruning's removals)."""
    prompts = model.visual_prompts
    if prompts is None or prompts.tokens == 0:
        return 0
    return int(prompts(0, 1).shape[1])


def _kv_at(model: PromptedViT, layer: int) -> KVPrompts | None:
    return None if model.kv_prompts is None else model.kv_prompts[layer]


def _insert_sample_prompts(
    x: torch.Tensor, groups: Sequence[TaskRows], counts: list[int], layer: int, npt: int
) -> torch.Tensor:
    """``x`` with each sample's prompts of ``layer`` (``counts``: each task's, padded to
    the most) after the prefix: inserted at layer 0, replacing the previous outputs where
    the task's are deep (a shallow task's prompt outputs carry on), as
    :meth:`PromptedViT._insert_prompts`."""
    slots = max(counts)
    fresh = x.new_zeros(x.shape[0], slots, x.shape[-1])
    deep = torch.zeros(x.shape[0], 1, 1, dtype=torch.bool, device=x.device)
    for (model, rows), count in zip(groups, counts, strict=True):
        prompts = model.visual_prompts
        if count and (layer == 0 or prompts.num_layers > 1):
            fresh[rows, :count] = prompts(layer, len(rows)).to(x.dtype)
            deep[rows] = prompts.num_layers > 1
    if layer == 0:
        return torch.cat([x[:, :npt], fresh, x[:, npt:]], dim=1)
    kept = x[:, npt : npt + slots]
    return torch.cat([x[:, :npt], torch.where(deep, fresh, kept), x[:, npt + slots :]], 1)


def _sample_kv(
    attn: nn.Module,
    prompts_of_rows: list[tuple[KVPrompts | None, list[int]]],
    token_valid: torch.Tensor,
    x: torch.Tensor,
) -> tuple[ExtraKV | None, torch.Tensor, bool]:
    """Each sample's key-value prompts of one attention, padded to the batch's most
    (None: no task has any), which keys (tokens, then prompts) each sample sees, and
    whether any sample has padding among its prompts."""
    counts = [kv_tokens(prompts) for prompts, _ in prompts_of_rows]
    slots = max(counts)
    if slots == 0:
        return None, token_valid, False
    extra_kv = per_sample_kv(prompts_of_rows, slots, attn.num_heads, attn.head_dim, x)
    kv_valid = token_valid.new_ones(token_valid.shape[0], slots)
    for (_, rows), count in zip(prompts_of_rows, counts, strict=True):
        kv_valid[rows, count:] = False
    return extra_kv, torch.cat([token_valid, kv_valid], dim=1), min(counts) < slots
