"""The ``gpu`` marker's fixtures: the device, exact fp32 matmuls, tiny registered
backbones and tiny built-in tasks.

Without CUDA every test here is skipped, unless ``E2VPT_GPU_TESTS_ON_CPU=1``: then the
same tests run on the CPU, so the tests themselves can be checked on any machine."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator

import pytest
import torch
from timm.models import register_model
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from e2vpt.data import Split, Task
from e2vpt.data.core import to_tensor
from e2vpt.data.synthetic import generate_split
from tests.conftest import TINY, TINY_SWIN

CPU_MODE_ENV = "E2VPT_GPU_TESTS_ON_CPU"
SKIP_REASON = f"needs a CUDA device (set {CPU_MODE_ENV}=1 to run these tests on the CPU)"
TINY_VIT_NAME = "e2vpt_gpu_test_vit"
TINY_SWIN_NAME = "e2vpt_gpu_test_swin"
TINY_CFG = dict(
    input_size=(3, 32, 32),
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
    interpolation="bilinear",
    crop_pct=1.0,
)


def cpu_mode() -> bool:
    return os.environ.get(CPU_MODE_ENV) == "1"


def _deterministic(build: type[torch.nn.Module], name: str, **kwargs: object) -> torch.nn.Module:
    """The same weights on every creation (the global RNG left as it was), so
    ``e2vpt.load`` and pruning rebuild exactly the backbone a run trained on."""
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "pretrained_strict"):
        kwargs.pop(key, None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model = build(**kwargs)
    model.pretrained_cfg = dict(architecture=name, **TINY_CFG)
    return model


@register_model
def e2vpt_gpu_test_vit(pretrained: bool = False, **kwargs: object) -> VisionTransformer:
    """The tiny test ViT under a timm name (torchrun subprocesses import this module)."""
    args = {**TINY, "num_classes": 10, **kwargs}
    return _deterministic(VisionTransformer, TINY_VIT_NAME, **args)


@register_model
def e2vpt_gpu_test_swin(pretrained: bool = False, **kwargs: object) -> SwinTransformer:
    args = {**TINY_SWIN, "num_classes": 10, **kwargs}
    return _deterministic(SwinTransformer, TINY_SWIN_NAME, **args)


def tiny_task(name: str, sizes: tuple[int, int, int]) -> Task:
    """The first (train, val, test) images of a built-in task, generated alone (the
    full task takes seconds to draw)."""
    splits = {}
    classes: list[str] = []
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        images, labels, classes = generate_split(name, split, size=n)
        splits[split] = Split(to_tensor(images, 32), torch.from_numpy(labels))
    return Task(name=f"tiny-{name}", classes=classes, group="structured", splits=splits)


@pytest.fixture(scope="session")
def gpu_device() -> torch.device:
    """``cuda`` where there is one; ``cpu`` in the CPU mode; otherwise a skip."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if cpu_mode():
        return torch.device("cpu")
    pytest.skip(SKIP_REASON)


@pytest.fixture(autouse=True)
def _every_test_needs_the_device(gpu_device: torch.device) -> None:
    """A test here that forgets ``gpu_device`` is skipped all the same."""


@pytest.fixture(scope="module", autouse=True)
def _one_cpu_thread_in_cpu_mode() -> Iterator[None]:
    """CPU mode: tiny ops run far faster on one thread than on two when other processes
    share the cores (two threads wait on each other); restored after the module."""
    if torch.cuda.is_available() or not cpu_mode():
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def require_cuda(device: torch.device, why: str) -> None:
    if device.type != "cuda":
        pytest.skip(f"CUDA only ({why}); CPU mode")


@pytest.fixture
def exact_fp32() -> Iterator[None]:
    """fp32 matmuls and convolutions without TF32, so device and CPU agree to ~1e-5."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cuda.matmul.allow_tf32 = matmul
            torch.backends.cudnn.allow_tf32 = cudnn
