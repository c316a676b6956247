"""torchrun data parallelism on CPU (gloo): the same run as one process, written once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from e2vpt.cli.main import main
from tests.conftest import write_vtab_tree

SCHEDULE = [
    "--augment",
    "flip",  # drawn on the global batch, so every rank's generator stays in step
    "--epochs",
    "2",
    "--warmup-epochs",
    "1",
    "--batch-size",
    "10",  # global batch: 5 images per process, last batch of 2 split 1 + 1
    "--no-progress",
]
TRAIN = [
    "train",
    "--method",
    "e2vpt",
    "--visual-tokens",
    "2",
    "--kv-tokens",
    "2",
    "--visual-dropout",
    "0",  # dropout masks are drawn per process; without it the runs must agree
    *SCHEDULE,
]


def train_on_one_and_two_ranks(
    train: list[str], tmp_path: Path
) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """The same run in this process and on 2 gloo ranks under torchrun; asserts both end
    on the same tunable tensors and returns (single, double, torchrun's result)."""
    data = tmp_path / "task"
    write_vtab_tree(data, {"train800": 32, "val200": 12, "test": 14}, num_classes=3)
    common = [*train, "--data", f"vtab:{data}", "--device", "cpu"]
    single, double = tmp_path / "single", tmp_path / "double"
    assert main([*common, "--output-dir", str(single)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", "-m", "e2vpt", *common, "--output-dir", str(double)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = load_file(single / "adapter.safetensors"), load_file(double / "adapter.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)
    return single, double, done


def test_two_gloo_processes_train_like_one(tmp_path: Path) -> None:
    single, double, done = train_on_one_and_two_ranks(TRAIN, tmp_path)
    assert "visual_prompts.prompts" in load_file(single / "adapter.safetensors")
    metrics_one = json.loads((single / "metrics.json").read_text())
    metrics_two = json.loads((double / "metrics.json").read_text())
    for a, b in zip(metrics_one, metrics_two, strict=True):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4
        assert a["train_top1"] == b["train_top1"] and a["val_top1"] == b["val_top1"]
    results = json.loads((double / "results.json").read_text())
    assert results["eval_top1"] == json.loads((single / "results.json").read_text())["eval_top1"]
    # rank 0 alone wrote the run folder, and reported once
    assert sorted(p.name for p in double.iterdir()) == sorted(p.name for p in single.iterdir())
    assert done.stdout.count("run folder:") == 1


@pytest.mark.parametrize(
    "method",
    ["mlp", "lora"],  # the head on cached features; modules injected into the backbone by peft
)
def test_the_papers_baselines_train_under_torchrun_like_one_process(
    method: str, tmp_path: Path
) -> None:
    train_on_one_and_two_ranks(["train", "--method", method, *SCHEDULE], tmp_path)


def test_a_torchrun_run_stopped_by_sigterm_resumes_like_one_uninterrupted(tmp_path: Path) -> None:
    """torchrun forwards SIGTERM to its workers; rank 0's saved state resumes on 2 ranks."""
    import signal
    import time

    data = tmp_path / "task"
    write_vtab_tree(data, {"train800": 32, "val200": 12, "test": 14}, num_classes=3)
    epochs = ["--epochs", "40"]  # long enough to be stopped after the first saved epoch
    common = [*TRAIN, "--data", f"vtab:{data}", "--device", "cpu", *epochs]
    single, double = tmp_path / "single", tmp_path / "double"
    assert main([*common, "--output-dir", str(single)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    first = subprocess.Popen(
        [*torchrun, "-m", "e2vpt", *common, "--output-dir", str(double)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not (double / "train_state.pt").exists():
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    assert not (double / "run_complete.json").exists()  # stopped before the end

    resumed = subprocess.run(
        [*torchrun, "-m", "e2vpt", "train", "--resume", "--output-dir", str(double)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr
    one, two = load_file(single / "adapter.safetensors"), load_file(double / "adapter.safetensors")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)
    metrics_one = json.loads((single / "metrics.json").read_text())
    metrics_two = json.loads((double / "metrics.json").read_text())
    assert len(metrics_two) == 40
    for a, b in zip(metrics_one, metrics_two, strict=True):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4
