"""The bundled demo backbone: a small timm ViT pretrained on CIFAR-10 by
``scripts/pretrain_demo_backbone.py``, so a first run needs no download."""

from __future__ import annotations

from importlib import resources
from typing import Any

import torch
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

from e2vpt.backbones.names import DEMO_BACKBONE
from e2vpt.errors import BackboneError

WEIGHTS_FILE = "demo_vit_cifar10.safetensors"

# CIFAR-10 channel statistics: the backbone was pretrained with them.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

DEMO_VIT_ARGS: dict[str, Any] = dict(
    img_size=32,
    patch_size=4,
    embed_dim=192,
    depth=6,
    num_heads=3,
    mlp_ratio=4.0,
    class_token=True,
    global_pool="token",
)

PRETRAINED_CFG: dict[str, Any] = dict(
    architecture=DEMO_BACKBONE,
    input_size=(3, 32, 32),
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    interpolation="bilinear",
    crop_pct=1.0,
    num_classes=10,
)


def weights_path() -> str:
    return str(resources.files("e2vpt.backbones").joinpath("weights", WEIGHTS_FILE))


def build_demo_vit(num_classes: int = 10, **kwargs: Any) -> VisionTransformer:
    args = {**DEMO_VIT_ARGS, **kwargs}
    model = VisionTransformer(num_classes=num_classes, **args)
    model.pretrained_cfg = dict(PRETRAINED_CFG)
    model.default_cfg = model.pretrained_cfg
    return model


def load_demo_weights(model: VisionTransformer, path: str | None = None) -> VisionTransformer:
    """Load the fp16 safetensors weights (upcast to the model's dtype)."""
    from safetensors.torch import load_file

    path = path or weights_path()
    try:
        state = load_file(path)
    except FileNotFoundError as err:
        raise BackboneError(
            f"demo backbone weights not found at {path}; run "
            "`python scripts/pretrain_demo_backbone.py` to create them"
        ) from err
    head_keys = [k for k in state if k.startswith("head.")]
    if model.num_classes != state["head.weight"].shape[0]:
        for k in head_keys:
            state.pop(k)
    state = {k: v.float() for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise RuntimeError(
            f"demo weights do not fit the demo architecture: missing={missing}, "
            f"unexpected={unexpected}"
        )
    return model


@register_model
def demo_vit_cifar10(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """timm entry point: ``timm.create_model("demo_vit_cifar10", pretrained=True)``."""
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "pretrained_strict"):
        kwargs.pop(key, None)
    num_classes = kwargs.pop("num_classes", 10)
    model = build_demo_vit(num_classes=num_classes, **kwargs)
    if pretrained:
        with torch.no_grad():
            load_demo_weights(model)
    return model
