"""The sweep protocol: grid → selection → final seeds, pruned finals, resume after a
kill, parallel workers, and its errors."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

import e2vpt.sweeps.runner as runner
from e2vpt.data import Task
from e2vpt.methods.base import ConfigError
from e2vpt.runs import TRIAL_RECORD_FILE
from e2vpt.sweeps.protocol import SweepError, SweepSettings, run_sweep, select_grid_point
from e2vpt.training.config import TrainConfig
from tests.conftest import small_builtin_task, write_vtab_tree
from tests.pruning.test_search import run_config


def record(lr: float, wd: float, val: float | None, diverged: bool = False) -> dict:
    return {
        "extra": {"base_lr": lr, "weight_decay": wd},
        "val_top1": val,
        "diverged": diverged,
    }


def test_selection_takes_best_val_then_smaller_lr_then_larger_wd() -> None:
    records = [
        record(1.0, 0.0, 0.50),
        record(0.1, 0.0, 0.50),
        record(0.1, 0.01, 0.50),
        record(10.0, 0.0, 0.40),
        record(50.0, 0.0, None, diverged=True),
    ]
    best = select_grid_point(records)
    assert best["extra"] == {"base_lr": 0.1, "weight_decay": 0.01}
    assert select_grid_point([*records, record(5.0, 0.0, 0.6)])["extra"]["base_lr"] == 5.0
    with pytest.raises(SweepError, match="every grid point diverged"):
        select_grid_point([record(50.0, 0.0, None, diverged=True)])


def linear_cfg(data: str = "builtin:position", **overrides: object) -> TrainConfig:
    return TrainConfig(
        method="linear",
        data=data,
        epochs=2,
        warmup_epochs=1,
        batch_size=16,
        progress=False,
        **overrides,
    )


@pytest.fixture(scope="module")
def task() -> Task:
    return small_builtin_task("position", (48, 32, 40))


def test_sweep_selects_on_val_and_reports_final_seeds(tmp_path: Path, task: Task) -> None:
    settings = SweepSettings(
        base_lrs=[0.05, 0.5],
        weight_decays=[0.0],
        seeds=[1, 2, 3],
        output_dir=str(tmp_path),
        progress=False,
    )
    summary = run_sweep(linear_cfg(), settings, task)
    root = tmp_path / task.name / "linear"
    assert summary["status"] == "complete" and summary["group"] == "structured"
    grid = [
        json.loads((root / "grid" / d / "trial.json").read_text())
        for d in ("lr0.05_wd0", "lr0.5_wd0")
    ]
    assert all(r["test_top1"] is None for r in grid)  # the grid never looks at test
    best = max(grid, key=lambda r: (r["val_top1"], -r["extra"]["base_lr"]))
    assert summary["selected"]["base_lr"] == best["extra"]["base_lr"]
    finals = [
        json.loads((root / "final" / f"seed{s}" / "trial.json").read_text()) for s in (1, 2, 3)
    ]
    for final in finals:
        cfg = final["config"]
        assert (cfg["train_split"], cfg["val_split"], cfg["eval_split"]) == (
            "trainval",
            None,
            "test",
        )
        assert cfg["base_lr"] == best["extra"]["base_lr"]
    scores = [100 * f["test_top1"] for f in finals]
    (result,) = summary["results"]
    assert result["test_top1"] == scores
    assert result["test_top1_mean"] == pytest.approx(statistics.fmean(scores))
    assert result["test_top1_std"] == pytest.approx(statistics.stdev(scores))
    assert result["tunable_params"] == 9 * 192 + 9  # the demo backbone's head
    assert json.loads((root / "sweep.json").read_text()) == summary
    assert "Final seeds" in (root / "sweep.md").read_text()


def test_a_killed_sweep_resumes_without_redoing_trials(
    tmp_path: Path, task: Task, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = SweepSettings(
        base_lrs=[0.05, 0.2, 0.5],
        weight_decays=[0.0],
        seeds=[1, 2],
        output_dir=str(tmp_path),
        progress=False,
    )
    real = runner.run_trial
    calls: list[str] = []

    def killed_after_two(trial: runner.Trial, **kwargs: object) -> dict:
        if len(calls) == 2:
            raise KeyboardInterrupt  # the kill, mid-sweep
        calls.append(trial.run_dir)
        return real(trial, **kwargs)

    monkeypatch.setattr(runner, "run_trial", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(linear_cfg(), settings, task)
    sweep_file = tmp_path / task.name / "linear" / "sweep.json"
    partial = json.loads(sweep_file.read_text())  # never half-written
    assert partial["status"] == "running" and len(partial["grid"]["trials"]) == 2

    def counting(trial: runner.Trial, **kwargs: object) -> dict:
        calls.append(trial.run_dir)
        return real(trial, **kwargs)

    monkeypatch.setattr(runner, "run_trial", counting)
    summary = run_sweep(linear_cfg(), settings, task)
    assert summary["status"] == "complete"
    assert len(calls) == 2 + 1 + 2  # two before the kill; then the last grid point + 2 seeds
    assert len(set(calls)) == len(calls)
    # a changed setting is a different trial: only the trials it touches are redone
    calls.clear()
    run_sweep(linear_cfg(), SweepSettings(**{**settings.__dict__, "seeds": [1, 2, 3]}), task)
    assert [Path(c).name for c in calls] == ["seed3"]
    # speed levers compute the same trial: a resumed sweep that turns them on redoes nothing
    calls.clear()
    levers = {"grad_checkpointing": True, "compile": True}
    three_seeds = SweepSettings(**{**settings.__dict__, "seeds": [1, 2, 3]})
    run_sweep(linear_cfg(**levers), three_seeds, task)
    assert calls == []


def test_trials_written_before_a_speed_lever_existed_are_reused(tmp_path: Path) -> None:
    config = {**TrainConfig().to_dict(), "output_dir": str(tmp_path)}
    trial = runner.Trial(kind="grid", label="lr1_wd0", run_dir=str(tmp_path), config=config)
    older = {k: v for k, v in config.items() if k not in ("grad_checkpointing", "compile")}
    old_trial = runner.Trial(kind="grid", label="lr1_wd0", run_dir=str(tmp_path), config=older)
    (tmp_path / TRIAL_RECORD_FILE).write_text(json.dumps({"key": old_trial.key(), "val_top1": 0.5}))
    record = {"key": old_trial.key(), "val_top1": 0.5, "run_dir": str(tmp_path)}
    assert runner.finished(trial) == record
    # what the trial computes still counts
    other = runner.Trial(**{**trial.to_dict(), "config": {**config, "base_lr": 2.0}})
    assert runner.finished(other) is None


def test_pruned_e2vpt_finals_use_the_fractions_chosen_on_val(tmp_path: Path, task: Task) -> None:
    cfg = run_config(tmp_path, batch_size=16)  # the sweep sets each trial's output_dir
    settings = SweepSettings(
        base_lrs=[0.1],
        weight_decays=[1e-4],
        seeds=[7],
        output_dir=str(tmp_path),
        prune=True,
        prune_token_fractions=[0.5],
        prune_segment_fractions=[0.0, 0.5],
        progress=False,
    )
    summary = run_sweep(cfg, settings, task)
    plain, pruned = summary["results"]
    assert (plain["method"], pruned["method"]) == ("e2vpt", "e2vpt-pruned")
    chosen = pruned["pruning"]
    root = tmp_path / task.name / "e2vpt"
    point = json.loads((root / "final_pruned" / "seed7" / "pruning_point.json").read_text())
    assert point["plan"]["token_fraction"] == chosen["token_fraction"] == 0.5
    assert point["plan"]["segment_fraction"] == chosen["segment_fraction"]
    assert len(point["plan"]["kept_tokens"]) == 2
    assert pruned["tunable_params"] < plain["tunable_params"]
    importance = json.loads((root / "final_pruned" / "seed7" / "importance.json").read_text())
    assert importance["images"] == len(task.split("trainval"))  # scored on the seed's own run
    assert (root / "final_pruned" / "seed7" / "adapter.safetensors").is_file()


def test_worker_processes_give_the_in_process_results(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "tiny_task"
    write_vtab_tree(folder, {"train800": 24, "val200": 12, "test": 16}, num_classes=3)
    cfg = linear_cfg(data=f"vtab:{folder}")
    common = {"base_lrs": [0.1, 0.5], "weight_decays": [0.0], "seeds": [1, 2], "progress": False}
    here = run_sweep(cfg, SweepSettings(**common, output_dir=str(tmp_path / "a")))
    pool = run_sweep(cfg, SweepSettings(**common, output_dir=str(tmp_path / "b"), devices=["cpu"]))
    assert pool["selected"] == here["selected"]
    assert pool["results"][0]["test_top1"] == pytest.approx(here["results"][0]["test_top1"])


def test_sweep_errors(tmp_path: Path, task: Task) -> None:
    no_val = Task(
        task.name, task.classes, {"train": task.splits["train"], "test": task.splits["test"]}
    )
    with pytest.raises(ConfigError, match=r"lacks split\(s\) \['val', 'trainval'\]"):
        run_sweep(linear_cfg(), SweepSettings(output_dir=str(tmp_path)), no_val)
    with pytest.raises(ConfigError, match="`prune` applies to `method` e2vpt"):
        run_sweep(linear_cfg(), SweepSettings(prune=True, output_dir=str(tmp_path)), task)
    with pytest.raises(ConfigError, match="base lr must be > 0"):
        run_sweep(linear_cfg(), SweepSettings(base_lrs=[0.0], output_dir=str(tmp_path)), task)
    assert not any(tmp_path.iterdir())  # nothing written before the errors
