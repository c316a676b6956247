"""The wrapped model: a frozen timm ViT, the method's additions, and a new head."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from e2vpt.layers.prompts import VisualPrompts
from e2vpt.methods.base import ConfigError, MethodConfig, get_method


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


def backbone_signature(backbone: nn.Module) -> dict[str, Any]:
    """Architecture facts a checkpoint must agree with."""
    patch = tuple(backbone.patch_embed.patch_size)
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


class PromptedViT(nn.Module):
    """A timm ``VisionTransformer`` used as it is, with prompts inserted around its own
    blocks and a fresh ``head``. The frozen backbone stays in eval mode whatever
    ``train()`` is called with, so only prompt dropout is active while training."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        backbone_name: str | None = None,
        global_pool: str | None = None,
    ) -> None:
        super().__init__()
        for attr in ("patch_embed", "blocks", "_pos_embed", "num_prefix_tokens", "forward_head"):
            if not hasattr(backbone, attr):
                raise ConfigError(
                    f"backbone {type(backbone).__name__} is not a timm VisionTransformer "
                    f"(it has no {attr!r}); e2vpt wraps timm ViTs such as "
                    "'vit_base_patch16_224.augreg_in21k' or the bundled 'demo_vit_cifar10'"
                )
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone_name = backbone_name or backbone_name_of(backbone)
        self.backbone_signature = backbone_signature(backbone)
        self.backbone_fingerprint = backbone_fingerprint(backbone)
        self.backbone_param_count = sum(
            p.numel() for n, p in backbone.named_parameters() if not n.startswith("head.")
        )
        backbone.reset_classifier(0, global_pool=global_pool)
        self.global_pool = backbone.global_pool
        self.backbone = backbone
        self.embed_dim = int(backbone.embed_dim)
        self.num_blocks = len(backbone.blocks)
        self.num_prefix_tokens = int(backbone.num_prefix_tokens)
        self.patch_size = tuple(backbone.patch_embed.patch_size)
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.visual_prompts: VisualPrompts | None = None
        self.frozen_backbone = True
        self.method_config: MethodConfig | None = None

    # -- method plumbing -------------------------------------------------------------
    def freeze_backbone(self) -> None:
        self.backbone.requires_grad_(False)
        self.frozen_backbone = True

    @property
    def method_name(self) -> str:
        return self.method_config.method_name if self.method_config else "none"

    def train(self, mode: bool = True) -> PromptedViT:
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()
        return self

    def head_parameter_names(self) -> list[str]:
        return ["head.weight", "head.bias"]

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
        rest = x[:, npt:] if layer == 0 else x[:, npt + prompts.tokens :]
        return torch.cat([x[:, :npt], new, rest], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        bb = self.backbone
        x = bb.patch_embed(x)
        x = bb._pos_embed(x)
        x = bb.patch_drop(x)
        x = bb.norm_pre(x)
        for index, block in enumerate(bb.blocks):
            x = self._insert_prompts(x, index)
            x = block(x)
        return bb.norm(x)

    def forward_pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_head(self.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_pre_logits(x))


def wrap(
    backbone: nn.Module,
    config: MethodConfig,
    num_classes: int,
    backbone_name: str | None = None,
    global_pool: str | None = None,
) -> PromptedViT:
    """Apply a method to a timm ViT: freeze what the method freezes, add its parts,
    attach a new ``num_classes`` head. The backbone object is modified in place."""
    if not isinstance(config, MethodConfig):
        raise ConfigError(
            f"config must be a method config such as E2VPTConfig(), got {type(config).__name__}"
        )
    config.validate()
    spec = get_method(config.method_name)
    model = PromptedViT(backbone, num_classes, backbone_name, global_pool)
    spec.apply(model, config)
    model.method_config = config
    model.train(model.training)
    return model
