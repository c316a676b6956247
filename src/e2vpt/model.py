"""The wrapped model: a frozen timm ViT or Swin, the method's additions, and a new head."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
from timm.models.swin_transformer import SwinTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from e2vpt.errors import ConfigError
from e2vpt.layers.class_token_block import class_token_block_forward, supports_class_token_block
from e2vpt.layers.kv_attention import add_kv_prompts
from e2vpt.layers.prompts import VisualPrompts
from e2vpt.layers.swin_prompts import (
    PromptedWindowAttention,
    StagePrompts,
    prompt_attention_of,
    prompted_block_forward,
)
from e2vpt.methods.base import MethodConfig, get_method


def backbone_name_of(backbone: nn.Module) -> str | None:
    """The name ``e2vpt.load`` can rebuild this backbone from (timm name[.tag])."""
    explicit = getattr(backbone, "e2vpt_backbone_name", None)
    if explicit:
        return str(explicit)
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture")
    if not arch:
        return None
    tag = cfg.get("tag")
    return f"{arch}.{tag}" if tag else str(arch)


def is_swin(backbone: nn.Module) -> bool:
    return isinstance(backbone, SwinTransformer)


def backbone_signature(backbone: nn.Module) -> dict[str, Any]:
    """Architecture facts a checkpoint must agree with."""
    patch = tuple(backbone.patch_embed.patch_size)
    if is_swin(backbone):
        blocks = [stage.blocks[0] for stage in backbone.layers]
        return {
            "class": type(backbone).__name__,
            "stage_dims": [int(block.dim) for block in blocks],
            "depths": [len(stage.blocks) for stage in backbone.layers],
            "num_heads": [int(block.attn.num_heads) for block in blocks],
            "window_size": list(blocks[0].window_size),
            "patch_size": list(patch),
            "img_size": list(backbone.patch_embed.img_size or ()),
        }
    return {
        "class": type(backbone).__name__,
        "embed_dim": int(backbone.embed_dim),
        "depth": len(backbone.blocks),
        "num_heads": int(backbone.blocks[0].attn.num_heads),
        "patch_size": list(patch),
        "num_prefix_tokens": int(backbone.num_prefix_tokens),
        "img_size": list(backbone.patch_embed.img_size or ()),
    }


def backbone_fingerprint(backbone: nn.Module) -> str | None:
    """A short hash of the pretrained weights, to catch a checkpoint loaded onto
    the right architecture with other weights (e.g. augreg vs orig IN-21k)."""
    weight = backbone.patch_embed.proj.weight
    if weight.is_meta:
        return None
    parts = [weight.detach().float().flatten()[:8192]]
    pos = getattr(backbone, "pos_embed", None)
    if pos is not None:
        parts.append(pos.detach().float().flatten()[:8192])
    data = torch.cat(parts).cpu().numpy().round(4).tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


VIT_POOLS = ("token", "avg", "avg-fc-norm", "map", "max", "avgmax")
SWIN_POOLS = ("avg",)
# kaiming: the official VPT/E²VPT head (kaiming_normal_ fan-out, std √(2/C); bias
# −log 99, a 1 % prior); trunc-normal: timm's (std 0.02, bias 0)
HEAD_INITS = ("kaiming", "trunc-normal")
HEAD_BIAS_PRIOR = 0.01


def init_head(head: nn.Linear, how: str) -> None:
    """Initialise a fresh classification head one of the :data:`HEAD_INITS` ways."""
    if how == "kaiming":
        nn.init.kaiming_normal_(head.weight, a=0, mode="fan_out")
        nn.init.constant_(head.bias, -math.log((1 - HEAD_BIAS_PRIOR) / HEAD_BIAS_PRIOR))
    elif how == "trunc-normal":
        nn.init.trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
    else:
        raise ConfigError(f"head_init must be one of {HEAD_INITS}, got {how!r}")


class PromptedModel(nn.Module):
    """What every wrapped backbone shares: a frozen backbone that stays in eval mode
    whatever ``train()`` is called with (so only prompt dropout is active while
    training), a fresh ``head``, and the bookkeeping checkpoints need. Subclasses say
    where prompts go (:meth:`add_visual_prompts`, :meth:`add_kv_prompts`)."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        backbone_name: str | None,
        head_init: str = "kaiming",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        if head_init not in HEAD_INITS:
            raise ConfigError(f"head_init must be one of {HEAD_INITS}, got {head_init!r}")
        self.head_init = head_init
        self.backbone_name = backbone_name or backbone_name_of(backbone)
        self.backbone_signature = backbone_signature(backbone)
        self.backbone_fingerprint = backbone_fingerprint(backbone)
        self.backbone_param_count = sum(
            p.numel() for n, p in backbone.named_parameters() if not n.startswith("head.")
        )
        self.backbone = backbone
        self.num_classes = num_classes
        self.patch_size = tuple(backbone.patch_embed.patch_size)
        self.visual_prompts: VisualPrompts | None = None  # ViT's (prunable) prompts
        self.frozen_backbone = True
        self.method_config: MethodConfig | None = None
        self.global_pool = ""
        # recompute each block's activations in the backward instead of storing them
        self.grad_checkpointing = False
        # the (mean, std) images were normalised with in training; None: the backbone's
        self.input_norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        # the task's class names, in label order (None: not known, e.g. an older run)
        self.class_names: list[str] | None = None

    def _run_block(self, fn: Any, *args: Any) -> Any:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _make_head(self, width: int) -> None:
        self.head = nn.Linear(width, self.num_classes)
        init_head(self.head, self.head_init)

    # -- method plumbing -------------------------------------------------------------
    def freeze_backbone(self) -> None:
        self.backbone.requires_grad_(False)
        self.frozen_backbone = True

    @property
    def method_name(self) -> str:
        return self.method_config.method_name if self.method_config else "none"

    def train(self, mode: bool = True) -> PromptedModel:
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()
        return self

    def head_parameter_names(self) -> list[str]:
        return ["head.weight", "head.bias"]

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
        raise NotImplementedError

    def add_kv_prompts(self, tokens: int, shared: bool, init: str = "heads") -> None:
        raise NotImplementedError

    # -- forward ---------------------------------------------------------------------
    def forward_pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_pre_logits(x))


class PromptedViT(PromptedModel):
    """A timm ``VisionTransformer`` used as it is, with prompts inserted around its own
    blocks (after the prefix tokens: CLS and any register tokens)."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        backbone_name: str | None = None,
        global_pool: str | None = None,
        head_init: str = "kaiming",
    ) -> None:
        for attr in ("patch_embed", "blocks", "_pos_embed", "num_prefix_tokens", "forward_head"):
            if not hasattr(backbone, attr):
                raise ConfigError(
                    f"backbone {type(backbone).__name__} is not a timm VisionTransformer or "
                    f"SwinTransformer (it has no {attr!r}); e2vpt wraps timm ViTs such as "
                    "'vit_base_patch16_224.augreg_in21k', Swins such as "
                    "'swin_base_patch4_window7_224.ms_in22k', or the bundled 'demo_vit_cifar10'"
                )
        super().__init__(backbone, num_classes, backbone_name, head_init)
        self.global_pool = self._set_pooling(backbone, global_pool)
        self.embed_dim = int(backbone.embed_dim)
        self.num_blocks = len(backbone.blocks)
        self.num_prefix_tokens = int(backbone.num_prefix_tokens)
        # class-token pooling: the last block computes only the class token's output
        # (layers/class_token_block.py); off = every token, as a plain timm forward
        self.class_token_shortcut = True
        self._make_head(self.embed_dim)

    @staticmethod
    def _set_pooling(backbone: nn.Module, requested: str | None) -> str:
        """SPEC §1.4: the backbone's convention (CLS; MAE: mean of the non-CLS tokens
        then ``fc_norm``), or what the user asks for."""
        pool = requested or getattr(backbone, "e2vpt_pool_convention", None)
        pool = pool or backbone.global_pool or "token"
        if pool not in VIT_POOLS:
            raise ConfigError(f"unknown pooling {pool!r} for a ViT; choose one of {VIT_POOLS}")
        if pool == "token" and not getattr(backbone, "has_class_token", True):
            raise ConfigError(
                f"{type(backbone).__name__} has no class token, so 'token' pooling would read "
                "a patch or prompt; use global_pool='avg' (or 'map' where the model has one)"
            )
        if pool == "map" and getattr(backbone, "attn_pool", None) is None:
            raise ConfigError("'map' pooling needs a backbone with an attention-pool head")
        backbone.reset_classifier(0, global_pool="avg" if pool == "avg-fc-norm" else pool)
        if pool == "avg-fc-norm" and isinstance(backbone.fc_norm, nn.Identity):
            # the final norm moves behind the pooling, keeping its pretrained affine
            backbone.fc_norm, backbone.norm = backbone.norm, nn.Identity()
        return pool

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
        add_kv_prompts(self.backbone, tokens=tokens, shared=shared, init=init)

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

    def forward_features(self, x: torch.Tensor, pooled_only: bool = False) -> torch.Tensor:
        """Every token's features; with ``pooled_only`` (and class-token pooling) only
        what the head reads: the class token, as (B, 1, D)."""
        bb = self.backbone
        x = bb.patch_embed(x)
        x = bb._pos_embed(x)
        x = bb.patch_drop(x)
        x = bb.norm_pre(x)
        last = len(bb.blocks) - 1
        for index, block in enumerate(bb.blocks):
            x = self._insert_prompts(x, index)
            if index == last and pooled_only and self._class_token_only(block):
                x = self._run_block(class_token_block_forward, block, x)
            else:
                x = self._run_block(block, x)
        return bb.norm(x)

    def _class_token_only(self, block: nn.Module) -> bool:
        return (
            self.class_token_shortcut
            and self.global_pool == "token"
            and supports_class_token_block(block)
        )

    def forward_pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        features = self.forward_features(x, pooled_only=True)
        return self.backbone.forward_head(features, pre_logits=True)


class PromptedSwin(PromptedModel):
    """A timm ``SwinTransformer`` with prompts inside its window attention
    (:mod:`e2vpt.layers.swin_prompts`). Features: the final norm, then the average over
    the last stage's tokens (prompts included, as for ViT average pooling)."""

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
        backbone.reset_classifier(0)
        self.stage_dims = [int(stage.blocks[0].dim) for stage in backbone.layers]
        self.depths = [len(stage.blocks) for stage in backbone.layers]
        self.embed_dim = self.stage_dims[0]
        self.num_blocks = sum(self.depths)
        self.stage_prompts: StagePrompts | None = None
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
        for stage in self.backbone.layers:
            for block in stage.blocks:
                prompt_attention_of(block)

    def add_kv_prompts(self, tokens: int, shared: bool, init: str = "heads") -> None:
        for stage in self.backbone.layers:
            for block in stage.blocks:
                base = prompt_attention_of(block).base
                block.attn = PromptedWindowAttention(base, tokens, shared, init)

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
                if prompts is None:
                    x = self._run_block(block, x)
                else:
                    x, prompts = self._run_block(prompted_block_forward, block, x, prompts)
        x = bb.norm(x)
        return x, (bb.norm(prompts) if prompts is not None else None)

    def forward_pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        grid, prompts = self.forward_features(x)
        tokens = grid.flatten(1, 2)
        if prompts is not None:
            tokens = torch.cat([prompts, tokens], dim=1)
        return tokens.mean(dim=1)


def wrap(
    backbone: nn.Module,
    config: MethodConfig,
    num_classes: int,
    backbone_name: str | None = None,
    global_pool: str | None = None,
    head_init: str = "kaiming",
) -> PromptedModel:
    """Apply a method to a timm ViT or Swin: freeze what the method freezes, add its
    parts, attach a new ``num_classes`` head (``head_init``: one of :data:`HEAD_INITS`;
    the default is the official VPT/E²VPT head). The backbone object is modified in
    place."""
    if not isinstance(config, MethodConfig):
        raise ConfigError(
            f"config must be a method config such as E2VPTConfig(), got {type(config).__name__}"
        )
    config.validate()
    spec = get_method(config.method_name)
    model_cls = PromptedSwin if is_swin(backbone) else PromptedViT
    model = model_cls(backbone, num_classes, backbone_name, global_pool, head_init)
    spec.apply(model, config)
    model.method_config = config
    model.train(model.training)
    return model
