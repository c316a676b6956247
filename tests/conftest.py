"""Tiny models and data so the whole suite runs in minutes on two CPU cores."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from e2vpt.data import Split, Task, load_builtin

torch.set_num_threads(min(2, torch.get_num_threads()))

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4, mlp_ratio=2.0)


def make_tiny_vit(seed: int = 0, **overrides: object) -> VisionTransformer:
    torch.manual_seed(seed)
    model = VisionTransformer(num_classes=10, **{**TINY, **overrides})
    model.e2vpt_backbone_name = "tiny_test_vit"
    model.eval()
    return model


@pytest.fixture
def tiny_vit() -> Callable[..., VisionTransformer]:
    return make_tiny_vit


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(123)
    return torch.randn(4, 3, 32, 32)


def small_builtin_task(name: str, sizes: tuple[int, int, int]) -> Task:
    """The first (train, val, test) images of a built-in task at 32×32."""
    full = load_builtin(f"builtin:{name}", image_size=32)
    return Task(
        name=f"small-{name}",
        classes=full.classes,
        splits={
            split: Split(s.images[:n], s.labels[:n])
            for (split, s), n in zip(full.splits.items(), sizes, strict=True)
        },
    )


def clone(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model)
