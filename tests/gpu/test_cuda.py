"""What only a GPU run shows: training in bf16 on the device, checkpoints that come back
bit for bit, pruning and sweeps there, attention kernels against an fp64 reference, the
fused optimizer, GPU-resident data, torchrun with NCCL, multitask batches and export.

Every test is marked ``gpu`` and skipped without CUDA; ``E2VPT_GPU_TESTS_ON_CPU=1`` runs
them on the CPU (the CUDA-only ones skip), so they can be checked anywhere."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.nn.attention import SDPBackend, sdpa_kernel

import e2vpt
from e2vpt.checkpoint import tunable_state
from e2vpt.data import Task
from e2vpt.inference import autocast, model_data_settings, predict, top1
from e2vpt.layers.kv_attention import KVPrompts, attention_with_kv_prompts
from e2vpt.layers.swin_prompts import window_attention_with_prompts
from e2vpt.multitask import MultiTaskModel
from e2vpt.pruning import importance_scores
from e2vpt.pruning.search import PruneSettings, prune_run
from e2vpt.sweeps.protocol import SweepSettings, run_sweep
from e2vpt.training import setup as training_setup
from e2vpt.training.config import TrainConfig
from e2vpt.training.optim import build_optimizer, parameter_groups
from e2vpt.training.setup import on_device_if_it_fits
from e2vpt.training.trainer import RunResult, train
from tests.conftest import make_tiny_swin, make_tiny_vit, write_vtab_tree
from tests.gpu.conftest import TINY_SWIN_NAME, TINY_VIT_NAME, require_cuda, tiny_task
from tests.test_multitask import perturbed, task_models

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
BACKBONES = {"vit": TINY_VIT_NAME, "swin": TINY_SWIN_NAME}
E2VPT_OPTIONS = {"visual_tokens": 4, "kv_tokens": 2}
EPOCHS = 3


def train_config(out: Path, device: torch.device, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = dict(
        backbone=TINY_VIT_NAME,
        method="e2vpt",
        method_config=dict(E2VPT_OPTIONS),
        epochs=EPOCHS,
        batch_size=16,
        device=device.type,
        precision="bf16",
        progress=False,
        output_dir=str(out),
    )
    return TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def task() -> Task:
    return tiny_task("position", (48, 32, 32))


# -- one training run per family, shared by the tests below ---------------------------


@dataclass
class TrainedRun:
    run_dir: Path
    model: e2vpt.PromptedModel  # the trained model itself (train leaves it on the CPU)
    result: RunResult
    metrics: list[dict[str, Any]]
    param_devices: set[str] = field(default_factory=set)  # tuned parameters, every epoch
    head_dtypes: set[torch.dtype] = field(default_factory=set)  # head output, train steps
    data_devices: list[str] = field(default_factory=list)  # each split after placement
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)


def watched_train(cfg: TrainConfig, task: Task) -> TrainedRun:
    """``train`` with the model, its devices and dtypes, the data placement and the
    optimizer recorded, so the tests see what the run really did."""
    seen: dict[str, Any] = {}
    params: set[str] = set()
    dtypes: set[torch.dtype] = set()
    placed: list[str] = []
    optimizers: list[torch.optim.Optimizer] = []

    def customize(model: e2vpt.PromptedModel) -> None:
        seen["model"] = model

        def hook(module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
            if module.training:
                dtypes.add(output.dtype)

        seen["hook"] = model.head.register_forward_hook(hook)

    def on_epoch(_row: dict[str, Any]) -> None:
        params.update(p.device.type for p in seen["model"].parameters() if p.requires_grad)

    real_place, real_build = training_setup.on_device_if_it_fits, training_setup.build_optimizer

    def place(images: torch.Tensor, device: torch.device) -> torch.Tensor:
        out = real_place(images, device)
        placed.append(out.device.type)
        return out

    def build(*args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        optimizers.append(real_build(*args, **kwargs))
        return optimizers[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training_setup, "on_device_if_it_fits", place)
        patch.setattr(training_setup, "build_optimizer", build)
        result = train(cfg, task=task, customize=customize, on_epoch=on_epoch)
    seen["hook"].remove()
    out = Path(cfg.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    return TrainedRun(out, seen["model"], result, metrics, params, dtypes, placed, optimizers)


@pytest.fixture(scope="module")
def trained_vit(
    gpu_device: torch.device, task: Task, tmp_path_factory: pytest.TempPathFactory
) -> TrainedRun:
    out = tmp_path_factory.mktemp("vit-run")
    return watched_train(train_config(out, gpu_device, backbone=BACKBONES["vit"]), task)


@pytest.fixture(scope="module")
def trained_swin(
    gpu_device: torch.device, task: Task, tmp_path_factory: pytest.TempPathFactory
) -> TrainedRun:
    out = tmp_path_factory.mktemp("swin-run")
    return watched_train(train_config(out, gpu_device, backbone=BACKBONES["swin"]), task)


FAMILIES = ["vit", "swin"]


# -- 1. training, checkpoint, eval -----------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_training_on_the_device_learns_and_completes(
    family: str, gpu_device: torch.device, request: pytest.FixtureRequest
) -> None:
    """The run trains where it was asked, under bf16 autocast, with its data and fused
    optimizer on the device, and its loss falls."""
    run: TrainedRun = request.getfixturevalue(f"trained_{family}")
    assert run.param_devices == {gpu_device.type}
    assert run.head_dtypes == {torch.bfloat16}
    assert run.data_devices == [gpu_device.type] * 3  # train, val, test: tiny, so resident
    assert len(run.optimizers) == 1
    assert run.optimizers[0].defaults["fused"] is (gpu_device.type == "cuda")
    losses = [row["train_loss"] for row in run.metrics]
    assert len(losses) == EPOCHS and all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.95 * losses[0], losses
    names = {p.name for p in run.run_dir.iterdir()}
    assert {"adapter.safetensors", "adapter.json", "results.json", "metrics.csv"} <= names
    assert {"train_config.yaml", "run_complete.json"} <= names
    assert "train_state.pt" not in names  # deleted once the run completed
    assert run.result.val_top1 is not None and run.result.eval_top1 is not None


@pytest.mark.parametrize("family", FAMILIES)
def test_the_checkpoint_reloads_bit_identically_and_predicts_the_same(
    family: str,
    gpu_device: torch.device,
    task: Task,
    request: pytest.FixtureRequest,
    exact_fp32: None,
) -> None:
    """Loaded onto the device or the CPU, every tuned tensor is the trained one, bit for
    bit, and the reloaded model answers as the trained one does."""
    run: TrainedRun = request.getfixturevalue(f"trained_{family}")
    want = tunable_state(run.model)
    assert set(load_file(run.run_dir / "adapter.safetensors")) == set(want)
    for where in (gpu_device, torch.device("cpu")):
        loaded = e2vpt.load(run.run_dir, map_location=where)
        assert {p.device.type for p in loaded.parameters()} == {where.type}
        got = tunable_state(loaded)
        assert got.keys() == want.keys()
        for name, tensor in want.items():
            assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name

    loaded = e2vpt.load(run.run_dir, map_location=gpu_device).eval()
    trained = copy.deepcopy(run.model).to(gpu_device).eval()
    _, normalizer = model_data_settings(loaded)
    normalizer = normalizer.to(gpu_device)
    images = task.split("test").images
    want_logits = predict(trained, images, gpu_device, "fp32", prepare=normalizer)
    got_logits = predict(loaded, images, gpu_device, "fp32", prepare=normalizer)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    on_cpu = e2vpt.load(run.run_dir).eval()
    cpu_logits = predict(on_cpu, images, torch.device("cpu"), "fp32", prepare=normalizer.cpu())
    torch.testing.assert_close(got_logits.cpu(), cpu_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_on_the_device_reproduces_the_runs_test_score(
    family: str, gpu_device: torch.device, task: Task, request: pytest.FixtureRequest
) -> None:
    """``e2vpt eval``'s computation (load, normalise, bf16 top-1) on the device gives the
    test score the run recorded."""
    run: TrainedRun = request.getfixturevalue(f"trained_{family}")
    model = e2vpt.load(run.run_dir, map_location=gpu_device)
    _, normalizer = model_data_settings(model)
    split = task.split("test")
    acc = top1(model, split, normalizer.to(gpu_device), gpu_device, "bf16")
    recorded = json.loads((run.run_dir / "results.json").read_text())["eval_top1"]
    assert abs(acc - recorded) <= 1 / len(split) + 1e-9  # one borderline image at most


# -- 2. pruning and sweeps -------------------------------------------------------------


def test_pruning_on_the_device(
    trained_vit: TrainedRun, gpu_device: torch.device, task: Task, tmp_path: Path
) -> None:
    """Importance, two rewound retrains and the selection run on the device; the pruned
    checkpoint holds the selected point's prompts and predicts there."""
    out = tmp_path / "pruned"
    settings = PruneSettings(
        token_fractions=[0.5],
        segment_fractions=[0.0, 0.5],
        epochs=1,
        device=gpu_device.type,
        output_dir=str(out),
        progress=False,
    )
    report = prune_run(trained_vit.run_dir, settings, task)
    assert len(report.rows) == 1 + 2
    points = json.loads((out / "pruning_report.json").read_text())["points"]
    # 2 of 4 tokens kept, 16 or 8 of 16 segments of 4 values each, in 3 layers
    assert sorted(p["prompt_values"] for p in points) == [3 * 2 * 8 * 4, 3 * 2 * 16 * 4]
    for point in points:
        assert TrainConfig.from_run_folder(point["run_dir"]).device == gpu_device.type
        assert 0.0 <= point["val_top1"] <= 1.0 and point["tokens_kept"] == 2
    pruned = e2vpt.load(out, map_location=gpu_device)
    assert pruned.visual_prompts.tokens == report.selected["tokens_kept"] == 2
    assert pruned.visual_prompts.stored_numel() == report.selected["prompt_values"]
    _, normalizer = model_data_settings(pruned)
    logits = predict(pruned, task.split("test").images, gpu_device, "bf16", prepare=normalizer)
    assert logits.shape == (32, task.num_classes) and torch.isfinite(logits).all()


def test_importance_scores_on_the_device_match_an_fp64_cpu_computation(
    trained_vit: TrainedRun, gpu_device: torch.device, task: Task, exact_fp32: None
) -> None:
    """What pruning ranks by (each token's loss rise when left out, ∂L/∂segment mask) is
    the same on the device in fp32 as in float64 on the CPU."""
    split = task.split("train")
    model = e2vpt.load(trained_vit.run_dir, map_location=gpu_device)
    got = importance_scores(
        model,
        split.images,
        split.labels,
        batch_size=16,
        mode="ablation",
        prepare=model_data_settings(model)[1].to(gpu_device),
        device=gpu_device,
    )
    reference = e2vpt.load(trained_vit.run_dir).double()
    _, normalizer = model_data_settings(reference)
    want = importance_scores(
        reference,
        split.images,
        split.labels,
        batch_size=16,
        mode="ablation",
        prepare=lambda x: normalizer(x).double(),
    )
    for a, b in ((got.token, want.token), (got.segment, want.segment)):
        scale = b.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * scale)


def test_a_sweep_on_the_device(gpu_device: torch.device, task: Task, tmp_path: Path) -> None:
    """Two learning rates on train → val, the better one retrained on trainval → test,
    every trial on the device."""
    cfg = train_config(tmp_path / "unused", gpu_device, epochs=1, warmup_epochs=0)
    settings = SweepSettings(
        base_lrs=[0.05, 0.5],
        weight_decays=[0.0],
        seeds=[1],
        output_dir=str(tmp_path / "sweeps"),
        progress=False,
    )
    summary = run_sweep(cfg, settings, task)
    root = tmp_path / "sweeps" / task.name / "e2vpt"
    assert summary["status"] == "complete"
    grid_dirs = [root / "grid" / name for name in ("lr0.05_wd0", "lr0.5_wd0")]
    grid = [json.loads((d / "trial.json").read_text()) for d in grid_dirs]
    assert all(not r["diverged"] and r["val_top1"] is not None for r in grid)
    best = min(grid, key=lambda r: (-r["val_top1"], r["extra"]["base_lr"]))
    assert summary["selected"]["base_lr"] == best["extra"]["base_lr"]
    final_dir = root / "final" / "seed1"
    final = json.loads((final_dir / "trial.json").read_text())
    assert 0.0 <= final["test_top1"] <= 1.0
    assert final["extra"]["base_lr"] == best["extra"]["base_lr"]
    for run_dir in (*grid_dirs, final_dir):
        assert TrainConfig.from_run_folder(run_dir).device == gpu_device.type
        assert (run_dir / "run_complete.json").is_file()


# -- 3. key-value prompt attention against an fp64 reference ---------------------------


def reference_kv_attention(
    attn: torch.nn.Module, x: torch.Tensor, kv: KVPrompts, key_valid: torch.Tensor | None
) -> torch.Tensor:
    """float64 on the CPU, written out: softmax(q·[k; prompts]ᵀ/√d, padding hidden) ·
    [v; prompts]; the prompt keys are visible to every query."""
    attn = copy.deepcopy(attn).cpu().double()
    x = x.detach().cpu().double()
    B, N, _ = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x).reshape(B, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    key = kv.key_prompt.detach().cpu().double()
    value = key if kv.value_prompt is None else kv.value_prompt.detach().cpu().double()
    k = torch.cat([k, key.expand(B, -1, -1, -1)], dim=2)
    v = torch.cat([v, value.expand(B, -1, -1, -1)], dim=2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
    if key_valid is not None:
        visible = torch.cat([key_valid.cpu(), torch.ones(B, kv.tokens, dtype=torch.bool)], 1)
        scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, N, heads * head_dim)
    return attn.proj(out)


def sharpened(module: torch.nn.Module, factor: float = 8.0) -> torch.nn.Module:
    """A copy whose qkv weights are larger: peaked attention, so errors show."""
    module = copy.deepcopy(module)
    with torch.no_grad():
        module.qkv.weight.mul_(factor)
    return module


KERNELS = {
    "default": None,
    "math": SDPBackend.MATH,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
}
KV_CASES = [
    (kernel, mask, precision)
    for kernel in KERNELS
    for mask in ("none", "bool", "float")
    for precision in ("fp32", "bf16")
    # flash attention takes neither a mask nor fp32
    if not (kernel == "flash" and (mask != "none" or precision == "fp32"))
]


def check_close(got: torch.Tensor, want: torch.Tensor, precision: str) -> None:
    got = got.detach().float().cpu()
    want = want.float()
    if precision == "fp32":
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    else:
        scale = want.abs().max().item()
        torch.testing.assert_close(got, want, rtol=0, atol=3e-2 * scale)


@pytest.mark.parametrize(("kernel", "mask", "precision"), KV_CASES)
def test_kv_prompt_attention_on_the_device_equals_the_fp64_reference(
    kernel: str, mask: str, precision: str, gpu_device: torch.device, exact_fp32: None
) -> None:
    """``attention_with_kv_prompts`` goes through SDPA (timm's default ``fused_attn``);
    each kernel SDPA may pick on the device (forced here), with and without a padding
    mask and bf16 autocast, gives the reference result."""
    if kernel in ("efficient", "flash"):
        require_cuda(gpu_device, f"the {kernel} SDPA kernel is CUDA's")
    torch.manual_seed(0)
    attn = sharpened(make_tiny_vit().blocks[1].attn).eval()
    kv = KVPrompts(attn.num_heads, attn.head_dim, tokens=3, shared=False)
    with torch.no_grad():
        kv.key_prompt.normal_(std=2.0)
        kv.value_prompt.normal_()
    x = torch.randn(3, 17, 64)
    key_valid = None
    attn_mask = None
    if mask != "none":
        key_valid = torch.ones(3, 17, dtype=torch.bool)
        key_valid[1, -5:] = False  # sample 1: its last 5 tokens are padding
        key_valid[2, 3:9] = False
        attn_mask = key_valid[:, None, None, :]
        if mask == "float":
            attn_mask = torch.zeros(attn_mask.shape).masked_fill(~attn_mask, float("-inf"))
    want = reference_kv_attention(attn, x, kv, key_valid)
    attn, kv = attn.to(gpu_device), kv.to(gpu_device)
    device_mask = None if attn_mask is None else attn_mask.to(gpu_device)
    backend = KERNELS[kernel]
    forced = contextlib.nullcontext() if backend is None else sdpa_kernel(backend)
    with torch.no_grad(), autocast(gpu_device, precision):
        with forced:
            got = attention_with_kv_prompts(attn, x.to(gpu_device), kv, device_mask)
        without_prompts = attn(x.to(gpu_device)) if mask == "none" else None
    check_close(got, want, precision)
    if without_prompts is not None:  # the prompts matter: far beyond the tolerance
        assert (without_prompts.float().cpu() - want.float()).abs().max() > 0.1 * want.abs().max()


def reference_window_attention(
    attn: torch.nn.Module,
    x: torch.Tensor,
    mask: torch.Tensor | None,
    prompts: int,
    kv: KVPrompts,
    key_valid: torch.Tensor | None,
) -> torch.Tensor:
    """float64 on the CPU: each window attends over [prompts; its tokens; kv prompts],
    relative-position bias and shift mask on the window tokens only, padding hidden."""
    attn = copy.deepcopy(attn).cpu().double()
    x = x.detach().cpu().double()
    B_, T, _ = x.shape
    heads = attn.num_heads
    head_dim = attn.qkv.out_features // 3 // heads
    n = T - prompts
    q, k, v = attn.qkv(x).reshape(B_, T, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    key = kv.key_prompt.detach().cpu().double()
    value = key if kv.value_prompt is None else kv.value_prompt.detach().cpu().double()
    k = torch.cat([k, key.expand(B_, -1, -1, -1)], dim=2)
    v = torch.cat([v, value.expand(B_, -1, -1, -1)], dim=2)
    scores = q @ k.transpose(-1, -2) * attn.scale
    extra = torch.zeros_like(scores)
    extra[:, :, prompts:, prompts : prompts + n] += attn._get_rel_pos_bias()
    if mask is not None:
        windows = mask.shape[0]
        extra[:, :, prompts:, prompts : prompts + n] += (
            mask.cpu().double().repeat(B_ // windows, 1, 1)[:, None]
        )
    scores = scores + extra
    if key_valid is not None:
        scores = scores.masked_fill(~key_valid.cpu()[:, None, None, :], float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B_, T, -1)
    return attn.proj(out)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("shifted", [False, True], ids=["window", "shifted"])
def test_swin_window_attention_with_prompts_on_the_device_equals_the_fp64_reference(
    shifted: bool, padded: bool, precision: str, gpu_device: torch.device, exact_fp32: None
) -> None:
    """Swin's prompted window attention (bias and shift mask through SDPA's float mask,
    per-sample padding of prompts as multitask batches use it) on the device."""
    torch.manual_seed(0)
    block = make_tiny_swin().layers[0].blocks[1 if shifted else 0]
    attn = sharpened(block.attn, 4.0).eval()
    mask = block.attn_mask
    assert (mask is not None) == shifted
    kv = KVPrompts(attn.num_heads, 16, tokens=3, shared=True)
    with torch.no_grad():
        kv.key_prompt.normal_(std=2.0)
    prompts = 2
    x = torch.randn(2 * 4, prompts + 16, 32)  # 2 images × 4 windows, 2 prompts + 4×4 tokens
    key_valid = None
    if padded:  # image 1 has one visual prompt and one kv prompt fewer: padding
        key_valid = torch.ones(8, prompts + 16 + 3, dtype=torch.bool)
        key_valid[4:, 1] = False
        key_valid[4:, -1] = False
    want = reference_window_attention(attn, x, mask, prompts, kv, key_valid)
    attn, kv = attn.to(gpu_device), kv.to(gpu_device)
    on_device = [None if t is None else t.to(gpu_device) for t in (mask, key_valid)]
    with torch.no_grad(), autocast(gpu_device, precision):
        got = window_attention_with_prompts(
            attn, x.to(gpu_device), on_device[0], prompts, kv, on_device[1]
        )
    check_close(got, want, precision)


# -- 4. the fused optimizer -------------------------------------------------------------


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_the_fused_optimizer_is_used_on_cuda_and_steps_like_the_unfused_one(
    name: str, gpu_device: torch.device, exact_fp32: None
) -> None:
    """``build_optimizer`` fuses on CUDA only; three steps of it equal the other
    implementation's (unfused on CUDA; on the CPU, torch's fused CPU kernel)."""
    cfg = TrainConfig(method="e2vpt", batch_size=64, weight_decay=1e-3, optimizer=name)
    torch.manual_seed(0)
    model = e2vpt.wrap(make_tiny_vit(), e2vpt.E2VPTConfig(visual_tokens=2, kv_tokens=2), 5)
    model = model.to(gpu_device).train()
    twin = copy.deepcopy(model)
    built = build_optimizer(model, cfg.resolve(), gpu_device)
    on_cuda = gpu_device.type == "cuda"
    assert built.defaults["fused"] is on_cuda
    lr = cfg.resolve().lr
    groups = parameter_groups(twin, cfg.weight_decay)
    try:
        if name == "adamw":
            other = torch.optim.AdamW(groups, lr=lr, fused=not on_cuda)
        else:
            other = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, fused=not on_cuda)
    except RuntimeError as err:  # an old torch without fused CPU kernels
        pytest.skip(f"no fused {name} on the CPU here: {err}")
    for mine, theirs in zip(built.param_groups, other.param_groups, strict=True):
        drop = ("params", "fused", "foreach")
        assert {k: v for k, v in mine.items() if k not in drop} == {
            k: v for k, v in theirs.items() if k not in drop
        }
    tuned = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    twin_params = dict(twin.named_parameters())
    before = {n: p.detach().clone() for n, p in tuned}
    torch.manual_seed(1)
    x = torch.randn(8, 3, 32, 32, device=gpu_device)
    y = torch.randint(0, 5, (8,), device=gpu_device)
    for _ in range(3):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(2)  # the same prompt dropout every step
        F.cross_entropy(model(x), y).backward()
        for n, p in tuned:  # the same gradients for both: only the optimizers differ
            twin_params[n].grad = p.grad.clone()
        built.step()
        other.step()
    moved = max((p.detach() - before[n]).abs().max().item() for n, p in tuned)
    assert moved > 1e-4
    for n, p in tuned:
        torch.testing.assert_close(p.detach(), twin_params[n].detach(), rtol=1e-5, atol=1e-6)


# -- 5. GPU-resident data ---------------------------------------------------------------


def test_a_split_is_resident_exactly_when_it_fits(
    gpu_device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On CUDA a split moves to the device iff it takes at most RESIDENT_SHARE of the
    free memory; on the CPU it is left as it is, without asking CUDA anything."""
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.int64).to(torch.uint8).view(2, 3, 8, 8)
    size = images.numel() * images.element_size()
    if gpu_device.type != "cuda":

        def no_query(*_args: object) -> tuple[int, int]:
            raise AssertionError("free CUDA memory asked for on the CPU")

        monkeypatch.setattr(torch.cuda, "mem_get_info", no_query)
        assert on_device_if_it_fits(images, gpu_device) is images
        return
    share = training_setup.RESIDENT_SHARE
    fits = math.ceil(size / share)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *_: (fits, 10 * fits))
    resident = on_device_if_it_fits(images, gpu_device)
    assert resident.device.type == "cuda" and torch.equal(resident.cpu(), images)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *_: (int(size / share) - 8, fits))
    assert on_device_if_it_fits(images, gpu_device) is images


def test_training_with_resident_or_host_data_learns_the_same(
    gpu_device: torch.device,
    task: Task,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    exact_fp32: None,
) -> None:
    """Data resident on the GPU (augmented there) or left on the host (copied every
    step): the same training, step for step."""
    losses = {}
    for resident in (True, False):
        if gpu_device.type == "cuda":
            free = 1 << 40 if resident else 1
            monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *_, free=free: (free, free))
        cfg = train_config(
            tmp_path / f"resident-{resident}",
            gpu_device,
            epochs=2,
            augment="crop-flip",
            precision="fp32",
        )
        run = watched_train(cfg, task)
        on_device = resident and gpu_device.type == "cuda"
        assert run.data_devices == ["cuda" if on_device else "cpu"] * 3
        assert run.param_devices == {gpu_device.type}
        losses[resident] = [row["train_loss"] for row in run.metrics]
        assert all(math.isfinite(x) for x in losses[resident])
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


# -- 6. torchrun ------------------------------------------------------------------------

# Under torchrun at world size 1 the trainer makes no process group of its own, so this
# launcher starts one (NCCL for a CUDA run, gloo for a CPU run, as Distributed.from_env
# chooses) and turns the data-parallel path on: DDP wrapping, all-reduced metrics and the
# barriers then run with the real backend.
LAUNCHER = """
import os
import sys

import torch
import torch.distributed as dist

import tests.gpu.conftest  # noqa: F401  (registers the tiny backbones)
from e2vpt.cli.main import main
from e2vpt.training.distributed import Distributed


def from_env(cls, device):
    dist.init_process_group("gloo" if device.startswith("cpu") else "nccl")
    print(f"process group {dist.get_backend()} of {dist.get_world_size()}", flush=True)
    return cls(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ["LOCAL_RANK"]),
        owns_group=True,
    )


Distributed.from_env = classmethod(from_env)
Distributed.enabled = property(lambda self: self.owns_group)
ddp_init = torch.nn.parallel.DistributedDataParallel.__init__


def wrapped(self, module, *args, **kwargs):
    print(f"DDP device_ids={kwargs.get('device_ids')}", flush=True)
    ddp_init(self, module, *args, **kwargs)


torch.nn.parallel.DistributedDataParallel.__init__ = wrapped
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("backend", ["gloo", "nccl"])
def test_torchrun_world_size_one(backend: str, gpu_device: torch.device, tmp_path: Path) -> None:
    """torchrun, one process, the data-parallel path on a real NCCL (CUDA) or gloo (CPU)
    group: the run folder is complete and equals the same run without torchrun."""
    if backend == "nccl":
        require_cuda(gpu_device, "NCCL")
        if not dist.is_nccl_available():
            pytest.skip("this torch build has no NCCL")
    device = "cuda" if backend == "nccl" else "cpu"
    data = tmp_path / "task"
    write_vtab_tree(data, {"train800": 24, "val200": 8, "test": 8}, num_classes=3)
    args = ["train", "--backbone", TINY_VIT_NAME, "--method", "e2vpt", "--visual-tokens", "2"]
    args += ["--kv-tokens", "2", "--visual-dropout", "0", "--data", f"vtab:{data}"]
    args += ["--epochs", "2", "--warmup-epochs", "1", "--batch-size", "8", "--no-progress"]
    args += ["--device", device, "--precision", "fp32"]
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    path = [str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    command += [str(launcher), *args, "--output-dir", str(tmp_path / "torchrun")]
    done = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert f"process group {backend} of 1" in done.stdout
    assert f"DDP device_ids={[0] if device == 'cuda' else None}" in done.stdout

    from e2vpt.cli.main import main

    single, torchrun = tmp_path / "single", tmp_path / "torchrun"
    assert main([*args, "--output-dir", str(single)]) == 0
    assert (torchrun / "run_complete.json").is_file()
    assert not (torchrun / "train_state.pt").exists()
    assert sorted(p.name for p in torchrun.iterdir()) == sorted(p.name for p in single.iterdir())
    one = load_file(single / "adapter.safetensors")
    two = load_file(torchrun / "adapter.safetensors")
    assert one.keys() == two.keys() and "visual_prompts.prompts" in one
    tolerance = dict(rtol=1e-3, atol=1e-4) if device == "cuda" else dict(rtol=1e-4, atol=1e-5)
    for key in one:
        torch.testing.assert_close(two[key], one[key], **tolerance)
    rows = [json.loads((d / "metrics.json").read_text()) for d in (single, torchrun)]
    assert [r["train_loss"] for r in rows[1]] == pytest.approx(
        [r["train_loss"] for r in rows[0]], rel=1e-3
    )
    # the same predictions (on CUDA, one borderline image of 8 may flip between processes)
    one_image = 1 / 8 + 1e-9 if device == "cuda" else 0.0
    for a, b in zip(rows[0], rows[1], strict=True):
        assert abs(a["val_top1"] - b["val_top1"]) <= one_image
    assert done.stdout.count("run folder:") == 1


# -- 7. multitask and export ------------------------------------------------------------


def swin_task_models(backbone: torch.nn.Module) -> dict[str, e2vpt.PromptedModel]:
    torch.manual_seed(1)
    configs: dict[str, tuple[e2vpt.MethodConfig, int]] = {
        "linear": (e2vpt.LinearConfig(), 3),
        "shallow": (e2vpt.VPTConfig(tokens=2), 4),
        "deep": (e2vpt.VPTConfig(tokens=4, deep=True), 5),
        "e2vpt": (e2vpt.E2VPTConfig(visual_tokens=3, kv_tokens=2), 6),
        "kv-only": (e2vpt.E2VPTConfig(visual_tokens=0, kv_tokens=3, shared_kv=False), 2),
    }
    return {n: perturbed(e2vpt.wrap(backbone, c, k)) for n, (c, k) in configs.items()}


MULTITASK: dict[str, tuple[Callable[[], torch.nn.Module], Callable[..., dict]]] = {
    "vit": (make_tiny_vit, task_models),
    "swin": (make_tiny_swin, swin_task_models),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_multitask_batch_on_the_device_equals_every_task_alone(
    family: str, gpu_device: torch.device, exact_fp32: None
) -> None:
    """Samples of many tasks in one pass of the shared backbone on the device, in fp32
    and under bf16 autocast, each equal to its own task's model there."""
    make_backbone, make_models = MULTITASK[family]
    backbone = make_backbone()
    models = make_models(backbone)
    multi = MultiTaskModel(backbone, models)
    reference = copy.deepcopy(multi)  # stays on the CPU
    multi = multi.to(gpu_device)
    names = list(models)
    torch.manual_seed(5)
    batch = torch.randn(2 * len(names), 3, 32, 32)
    order = torch.randperm(len(batch), generator=torch.Generator().manual_seed(0))
    tasks = [(names * 2)[j] for j in order.tolist()]  # every task twice, mixed
    on_device = batch.to(gpu_device)
    for precision in ("fp32", "bf16"):
        with torch.no_grad(), autocast(gpu_device, precision):
            got = multi(on_device, tasks)
            alone = [multi.tasks[t](on_device[i : i + 1])[0] for i, t in enumerate(tasks)]
        for i, (g, a) in enumerate(zip(got, alone, strict=True)):
            assert g.shape == a.shape
            g, a = g.float().cpu(), a.float().cpu()
            if precision == "fp32":
                torch.testing.assert_close(g, a, rtol=1e-4, atol=1e-4, msg=f"{i}: {tasks[i]}")
            else:
                atol = 5e-2 * max(1.0, a.abs().max().item())
                torch.testing.assert_close(g, a, rtol=0, atol=atol, msg=f"{i}: {tasks[i]}")
    if gpu_device.type == "cuda":  # and the device's fp32 answers are the CPU's
        with torch.no_grad():
            want = reference(batch, tasks)
            got = multi(on_device, tasks)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g.cpu(), w, rtol=1e-4, atol=1e-4)


def test_onnx_export_of_a_model_trained_on_the_device(
    trained_vit: TrainedRun,
    gpu_device: torch.device,
    task: Task,
    tmp_path: Path,
    exact_fp32: None,
) -> None:
    """A model on the device exports as it is (from a CPU copy, leaving it on the
    device); the file answers as the model does on the device, on the task's images."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    from e2vpt.export import deployable, export_model

    model = e2vpt.load(trained_vit.run_dir, map_location=gpu_device)
    assert model.input_norm is not None
    mean, std = model.input_norm
    out = tmp_path / "model.onnx"
    report = export_model(deployable(model, mean, std), 32, "onnx", out)
    assert report.max_abs_logit_error <= 1e-4 and out.is_file()
    assert next(model.parameters()).device.type == gpu_device.type  # left where it was
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    pixels = task.split("test").images[:8].float()
    exported = torch.from_numpy(session.run(None, {"images": pixels.numpy()})[0])
    on_device = deployable(copy.deepcopy(model), mean, std).to(gpu_device)
    with torch.no_grad():
        want = on_device(pixels.to(gpu_device)).cpu()
    assert exported.shape == (8, task.num_classes)
    torch.testing.assert_close(exported, want, rtol=1e-4, atol=1e-4)
    assert torch.equal(exported.argmax(-1), want.argmax(-1))
