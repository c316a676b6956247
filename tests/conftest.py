"""Tiny models and data so the whole suite runs in minutes on two CPU cores."""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from timm.layers import LayerNorm
from timm.models import register_model
from timm.models.eva import Eva
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from e2vpt.data import Split, Task, load_builtin
from e2vpt.data.cache import CACHE_ENV

# the suite runs on as many pytest-xdist workers as there are cores: each takes its share
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4, mlp_ratio=2.0)


def make_tiny_vit(seed: int = 0, **overrides: object) -> VisionTransformer:
    torch.manual_seed(seed)
    model = VisionTransformer(num_classes=10, **{**TINY, **overrides})
    model.e2vpt_backbone_name = "tiny_test_vit"
    model.eval()
    return model


TINY_SWIN = dict(
    img_size=32, patch_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4
)


def make_tiny_swin(seed: int = 0, **overrides: object) -> SwinTransformer:
    """Two stages: stage 0 has 4 windows and a shifted block, stage 1 a single window."""
    torch.manual_seed(seed)
    model = SwinTransformer(num_classes=10, **{**TINY_SWIN, **overrides})
    model.e2vpt_backbone_name = "tiny_test_swin"
    model.eval()
    return model


@register_model
def e2vpt_test_swin(pretrained: bool = False, **kwargs: object) -> SwinTransformer:
    """A timm name for the tiny Swin, so CLI tests can pass ``--backbone e2vpt_test_swin``."""
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "pretrained_strict"):
        kwargs.pop(key, None)
    model = SwinTransformer(**{**TINY_SWIN, "num_classes": 10, **kwargs})
    model.pretrained_cfg = dict(
        architecture="e2vpt_test_swin",
        input_size=(3, 32, 32),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        interpolation="bilinear",
        crop_pct=1.0,
    )
    return model


def make_tiny_register_vit(seed: int = 0) -> VisionTransformer:
    """DINOv2-style: CLS + 2 register tokens, layer scale."""
    return make_tiny_vit(seed, reg_tokens=2, init_values=1e-2)


def make_tiny_clip_vit(seed: int = 0) -> VisionTransformer:
    """CLIP-style: a LayerNorm before the blocks (timm's `norm_pre`)."""
    return make_tiny_vit(seed, pre_norm=True)


# DINOv3-style (timm's Eva): rotary embeddings on the patches only, 4 register tokens, no
# absolute positions, layer scale, SwiGLU MLP, Eva's separate q/v biases, any image size
TINY_EVA = dict(
    img_size=32,
    patch_size=8,
    embed_dim=32,
    depth=2,
    num_heads=2,
    qkv_bias=True,
    init_values=0.1,
    num_reg_tokens=4,
    use_abs_pos_emb=False,
    use_rot_pos_emb=True,
    rope_type="dinov3",
    rope_temperature=100,
    rope_rotate_half=True,
    swiglu_mlp=True,
    scale_mlp=True,
    global_pool="token",
    use_fc_norm=False,
    dynamic_img_size=True,
    norm_layer=LayerNorm,
)


def make_tiny_eva(seed: int = 0, **overrides: object) -> Eva:
    """A tiny Eva with every bias moved off timm's zero init (so the separate q/v biases
    count in every comparison)."""
    torch.manual_seed(seed)
    model = Eva(num_classes=10, **{**TINY_EVA, **overrides})
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("q_bias", "v_bias")):
                param.normal_(std=0.2)
    model.e2vpt_backbone_name = "tiny_test_eva"
    model.eval()
    return model


BACKBONE_FAMILIES: dict[str, Callable[..., torch.nn.Module]] = {
    "vit": make_tiny_vit,
    "register-vit": make_tiny_register_vit,
    "clip-vit": make_tiny_clip_vit,
    "eva": make_tiny_eva,
    "swin": make_tiny_swin,
}


HOME_CACHE = Path.home() / ".cache" / "e2vpt"


def _home_cache_entries() -> set[str]:
    """``~/.cache/e2vpt``'s entries two levels down (``data/<entry>``): cheap to list."""
    if not HOME_CACHE.is_dir():
        return set()
    return {str(p.relative_to(HOME_CACHE)) for p in HOME_CACHE.glob("*/*")}


@pytest.fixture(scope="session", autouse=True)
def no_cache_in_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Nothing a test starts writes into the user's ~/.cache/e2vpt: a decoded-data cache
    for the whole session, in place before any module fixture starts a process (a Ray
    cluster's workers inherit it), and a check at the end that ~ gained nothing."""
    before = _home_cache_entries()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("session-data-cache")))
        yield
    gained = sorted(_home_cache_entries() - before)
    assert not gained, f"the tests wrote into {HOME_CACHE}: {gained}"


@pytest.fixture(autouse=True)
def data_cache_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Each test its own decoded-data cache: none touches ~/.cache, none reads another's."""
    path = tmp_path_factory.mktemp("data-cache")
    monkeypatch.setenv(CACHE_ENV, str(path))
    return path


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
        group=full.group,
        splits={
            split: Split(s.images[:n], s.labels[:n])
            for (split, s), n in zip(full.splits.items(), sizes, strict=True)
        },
    )


def clone(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model)


def write_vtab_tree(
    folder: Path,
    sizes: dict[str, int],
    num_classes: int,
    seed: int = 0,
    image_hw: tuple[int, int] = (20, 24),
) -> dict[str, list[tuple[str, int]]]:
    """A VTAB-1k task folder: random JPEGs + train800/val200/train800val200/test lists
    (train800val200 = train800 + val200, as in the real release). Returns the lists."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lists: dict[str, list[tuple[str, int]]] = {}
    for split in ("train800", "val200", "test"):
        lists[split] = []
        for i in range(sizes[split]):
            rel = f"images/{split}_{i}.jpg"
            pixels = rng.integers(0, 256, size=(*image_hw, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / rel)
            lists[split].append((rel, int(i % num_classes)))
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for split, rows in lists.items():
        (folder / f"{split}.txt").write_text("".join(f"{r} {label}\n" for r, label in rows))
    return lists


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Tiny runs that fork or start processes: one torch thread costs less than two on a
    busy machine, and a forked child never touches the parent's thread pool."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def write_tiny_vtab(folder: Path) -> Path:
    """A two-class VTAB-layout task of 12 / 4 / 4 images, for runs that must be quick."""
    write_vtab_tree(folder, {"train800": 12, "val200": 4, "test": 4}, num_classes=2)
    return folder


def stop_after(epoch: int) -> Callable[[dict[str, Any]], None]:
    """An ``on_epoch`` hook that stops a run like Ctrl-C once ``epoch`` has ended."""

    def on_epoch(row: dict[str, Any]) -> None:
        if row["epoch"] == epoch:
            raise KeyboardInterrupt

    return on_epoch
