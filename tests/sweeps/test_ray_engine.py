"""Sweeps on a local Ray instance (CPU): same results files as the in-process engine,
resume after an interruption, ASHA stopping a diverging grid point."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from e2vpt.cli.main import main
from e2vpt.data.cache import CACHE_ENV

COLORS = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]


def write_color_task(folder: Path, sizes: dict[str, int], seed: int = 0) -> None:
    """A learnable VTAB-layout task: the class is the dominant colour, plus noise."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    lists = {}
    for split, n in sizes.items():
        lists[split] = []
        for i in range(n):
            label = i % len(COLORS)
            noise = rng.integers(-40, 40, size=(16, 16, 3))
            pixels = np.clip(np.array(COLORS[label]) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"images/{split}_{i}.png")
            lists[split].append(f"images/{split}_{i}.png {label}\n")
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for split, rows in lists.items():
        (folder / f"{split}.txt").write_text("".join(rows))


@pytest.fixture(scope="module")
def ray_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The decoded-data cache of Ray's workers: they start before any test's own cache
    fixture, so they are given theirs explicitly (never ~/.cache)."""
    return tmp_path_factory.mktemp("ray-data-cache")


@pytest.fixture(scope="module")
def local_ray(ray_cache_dir: Path) -> Iterator[None]:
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    ray = pytest.importorskip("ray", reason="the Ray extra is part of the dev environment")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {CACHE_ENV: str(ray_cache_dir)}},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def color_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("color") / "colors"
    write_color_task(folder, {"train800": 24, "val200": 12, "test": 12})
    return folder


def sweep(task: Path, out: Path, *extra: str) -> int:
    return main(
        ["sweep", "--data", f"vtab:{task}", "--method", "vpt-shallow", "--tokens", "1"]
        + ["--epochs", "2", "--warmup-epochs", "0", "--batch-size", "8", "--no-progress"]
        + ["--device", "cpu", "--seeds", "42", "--output-dir", str(out), *extra]
    )


def trial_files(out: Path) -> dict[str, float]:
    return {str(p.relative_to(out)): p.stat().st_mtime for p in out.rglob("trial.json")}


def test_ray_sweep_matches_in_process_and_resumes(
    local_ray: None, color_task: Path, tmp_path: Path
) -> None:
    grid = ["--base-lrs", "0.05", "0.5", "--weight-decays", "0", "0.001"]
    ray_out, local_out = tmp_path / "ray", tmp_path / "local"
    assert sweep(color_task, ray_out, *grid, "--engine", "ray") == 0
    assert sweep(color_task, local_out, *grid) == 0
    summary = {}
    for name, out in (("ray", ray_out), ("local", local_out)):
        summary[name] = json.loads((out / "colors" / "vpt-shallow" / "sweep.json").read_text())
        assert summary[name]["status"] == "complete"
    ray_grid, local_grid = summary["ray"]["grid"], summary["local"]["grid"]
    assert len(ray_grid["trials"]) == 4
    for a, b in zip(ray_grid["trials"], local_grid["trials"], strict=True):
        assert (a["base_lr"], a["weight_decay"]) == (b["base_lr"], b["weight_decay"])
        assert abs(a["val_top1"] - b["val_top1"]) <= 1 / 12 + 1e-9  # one image at most
    assert summary["ray"]["selected"] == summary["local"]["selected"]
    assert main(["report", str(ray_out), "--output-dir", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert any(row.get("method") == "vpt-shallow" for row in report["rows"])

    # an interrupted sweep: one grid point and the final seed never finished
    (ray_out / "colors/vpt-shallow/grid/lr0.5_wd0/trial.json").unlink()
    (ray_out / "colors/vpt-shallow/final/seed42/trial.json").unlink()
    before = trial_files(ray_out)
    assert sweep(color_task, ray_out, *grid, "--engine", "ray") == 0
    after = trial_files(ray_out)
    assert set(after) == set(before) | {
        "colors/vpt-shallow/grid/lr0.5_wd0/trial.json",
        "colors/vpt-shallow/final/seed42/trial.json",
    }
    assert all(after[name] == mtime for name, mtime in before.items())  # not rerun


def test_asha_stops_the_diverging_grid_point(
    local_ray: None, color_task: Path, tmp_path: Path
) -> None:
    out = tmp_path / "asha"
    code = sweep(
        color_task,
        out,
        "--epochs",
        "3",
        "--base-lrs",
        "0.5",
        "3000",  # lr = 3000 × 8 / 256: with timm's head init the loss explodes at once
        "--head-init",
        "trunc-normal",
        "--weight-decays",
        "0",
        "--engine",
        "ray",
        "--asha",
        "--max-concurrent-trials",
        "1",  # in grid order: the sane point sets the bar at each rung first
    )
    assert code == 0
    root = out / "colors" / "vpt-shallow"
    stopped = json.loads((root / "grid/lr3000_wd0/trial.json").read_text())
    kept = json.loads((root / "grid/lr0.5_wd0/trial.json").read_text())
    assert stopped["stopped_early"] and stopped["stopped_after_epochs"] == 1
    assert stopped["val_top1"] is None and not stopped["diverged"]
    assert kept["val_top1"] is not None and "stopped_early" not in kept
    summary = json.loads((root / "sweep.json").read_text())
    assert summary["selected"]["base_lr"] == 0.5
    assert "stopped by ASHA after 1 epoch" in (root / "sweep.md").read_text()


def test_a_relative_output_dir_is_where_ray_trials_write(
    local_ray: None,
    color_task: Path,
    ray_cache_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray runs each trial in a working directory of its own: the sweep hands it
    absolute run folders, so a relative --output-dir means the same as anywhere else."""
    monkeypatch.chdir(tmp_path)
    grid = ["--base-lrs", "0.5", "--weight-decays", "0"]
    assert sweep(color_task, Path("rel"), *grid, "--engine", "ray") == 0
    root = tmp_path / "rel" / "colors" / "vpt-shallow"
    for trial in ("grid/lr0.5_wd0", "final/seed42"):
        record = json.loads((root / trial / "trial.json").read_text())
        assert record["run_dir"] == str(root / trial) and not record["diverged"]
    assert json.loads((root / "sweep.json").read_text())["status"] == "complete"
    assert any(ray_cache_dir.iterdir())  # the workers decoded into their own cache
