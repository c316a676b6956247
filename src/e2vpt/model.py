"""What every wrapped model shares, whatever its backbone family (``e2vpt.families``)
and method (``e2vpt.methods``): the frozen backbone, a new head and the bookkeeping a
checkpoint needs. This module knows no family and no method."""

from __future__ import annotations

import hashlib
import math
import re
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from e2vpt.errors import ConfigError
from e2vpt.layers.prompts import VisualPrompts
from e2vpt.layers.settings import HEAD_INITS

if TYPE_CHECKING:
    from e2vpt.methods.base import MethodConfig


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


def backbone_fingerprint(backbone: nn.Module) -> str | None:
    """A short hash of the pretrained weights, to catch a checkpoint loaded onto
    the right architecture with other weights (e.g. augreg vs orig IN-21k)."""
    embed = backbone.patch_embed
    proj = getattr(embed, "proj", None)  # a hybrid's may be an Identity: its stem's first
    weight = proj.weight if isinstance(getattr(proj, "weight", None), torch.Tensor) else None
    weight = weight if weight is not None else next(embed.parameters())
    if weight.is_meta:
        return None
    parts = [weight.detach().float().flatten()[:8192]]
    pos = getattr(backbone, "pos_embed", None)
    if pos is not None:
        parts.append(pos.detach().float().flatten()[:8192])
    data = torch.cat(parts).cpu().numpy().round(4).tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


HEAD_BIAS_PRIOR = 0.01
# the backbone's own classifiers (DeiT distilled has two), never part of its features
BACKBONE_CLASSIFIERS = ("head.", "head_dist.")


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
    training), a fresh ``head``, and the bookkeeping checkpoints need. Prompts, head and
    pooling are the model's own: the backbone's modules and weights are left as they
    are unless the method changes them (``MethodConfig.changes_backbone``).

    A backbone family is a subclass, registered with ``e2vpt.families.register_family``:
    it says which backbones it takes (:meth:`accepts`), the architecture facts a
    checkpoint must agree with (:meth:`signature`), where prompts go
    (:meth:`add_visual_prompts`, :meth:`add_kv_prompts`) and how its forward runs."""

    family: ClassVar[str] = ""
    # what the family wraps, for the message that refuses other backbones
    description: ClassVar[str] = ""
    # the poolings it offers (`global_pool`), and whether its visual prompts can be pruned
    pools: ClassVar[tuple[str, ...]] = ()
    prunable_prompts: ClassVar[bool] = False
    # (pattern, replacement) for tensor names older e2vpt versions saved differently
    legacy_renames: ClassVar[tuple[tuple[str, str], ...]] = ()

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
        self.backbone_signature = self.signature(backbone)
        self.backbone_fingerprint = backbone_fingerprint(backbone)
        self.backbone_param_count = sum(
            p.numel()
            for n, p in backbone.named_parameters()
            if not n.startswith(BACKBONE_CLASSIFIERS)
        )
        self.backbone = backbone
        self.num_classes = num_classes
        self.patch_size = tuple(backbone.patch_embed.patch_size)
        self.visual_prompts: VisualPrompts | None = None  # ViT's (prunable) prompts
        # between the pooled features and the head: a method's classifier layers (MLP-k)
        self.pre_head: nn.Module = nn.Identity()
        # a method's branch from the image itself, fused with the features (Side-tuning):
        # side_branch(features, images) → features; None: no such branch
        self.side_branch: nn.Module | None = None
        self.frozen_backbone = True
        # backbone modules a method trains while the rest stays frozen (Partial-k's
        # blocks): in train mode with the model, the rest of the backbone in eval mode
        self.trained_backbone_modules: list[nn.Module] = []
        self.method_config: MethodConfig | None = None
        self.global_pool = ""
        # recompute each block's activations in the backward instead of storing them
        self.grad_checkpointing = False
        # the (mean, std) images were normalised with in training; None: the backbone's
        self.input_norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        # the task's class names, in label order (None: not known, e.g. an older run)
        self.class_names: list[str] | None = None

    # -- the family contract -----------------------------------------------------------
    @classmethod
    def accepts(cls, backbone: nn.Module) -> bool:
        """True when this family wraps ``backbone``."""
        raise NotImplementedError

    @classmethod
    def signature(cls, backbone: nn.Module) -> dict[str, Any]:
        """Architecture facts a checkpoint must agree with."""
        raise NotImplementedError

    def release_backbone_head(self) -> None:
        """Drop the backbone's own classifier (the model has its own head). Only for a
        method that takes the backbone for itself: a shared backbone is left as it is."""
        self.backbone.reset_classifier(0)

    def rename_legacy(self, name: str) -> str:
        """A tensor name as an older e2vpt saved it → today's name."""
        for pattern, replacement in self.legacy_renames:
            name = re.sub(pattern, replacement, name)
        return name

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
            for module in self.trained_backbone_modules:
                module.train(mode)
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

    def backbone_blocks(self) -> list[nn.Module]:
        """The backbone's transformer blocks, input to output (Swin: every stage's)."""
        raise NotImplementedError

    def final_norm(self) -> nn.Module:
        """The norm the pooled features pass through last."""
        raise NotImplementedError

    @property
    def feature_width(self) -> int:
        """Width of the pooled features the head reads."""
        return int(self.head.in_features)

    # -- forward ---------------------------------------------------------------------
    def forward_pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled features → logits (through the method's classifier layers, if any)."""
        return self.head(self.pre_head(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.forward_pre_logits(x)
        if self.side_branch is not None:
            features = self.side_branch(features, x)
        return self.forward_head(features)
