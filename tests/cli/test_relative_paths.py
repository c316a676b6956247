"""Relative paths, typed as a new user types them: a run stopped with Ctrl-C resumes
with the very same arguments; eval, predict, prune and export work on it from another
working directory; a sweep stores absolute run folders before any trial starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import e2vpt.training.epoch as epoch_loop
from e2vpt.cli.main import main
from e2vpt.runs import (
    PRUNING_REPORT_NAME,
    RUN_COMPLETE_FILE,
    TRAIN_CONFIG_FILE,
    TRIAL_RECORD_FILE,
    inspect_folder,
    read_train_config,
)
from tests.conftest import write_vtab_tree
from tests.data.test_image_folder import write_tree

TRAIN = ["train", "--data", "data", "--method", "e2vpt", "--visual-tokens", "2"]
TRAIN += ["--kv-tokens", "1", "--epochs", "2", "--warmup-epochs", "0", "--batch-size", "4"]
TRAIN += ["--output-dir", "run", "--no-progress"]


def stop_after_the_first_saved_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C right after epoch 1's training state is written."""
    real = epoch_loop.write_state

    def write_then_stop(path: Path, state: dict[str, Any]) -> None:
        real(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(epoch_loop, "write_state", write_then_stop)


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding an image folder ``data`` (train/val/test)."""
    folder = tmp_path / "work"
    per_class = {"cat": 4, "dog": 4}
    write_tree(folder / "data", {"train": per_class, "val": per_class, "test": per_class})
    monkeypatch.chdir(folder)
    return folder


def test_ctrl_c_then_resume_with_the_same_relative_arguments_then_use_it_elsewhere(
    work: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with monkeypatch.context() as patch:
        stop_after_the_first_saved_epoch(patch)
        assert main(TRAIN) == 130
    assert inspect_folder("run").kind == "incomplete"
    stored = read_train_config("run")
    assert (stored.data, stored.output_dir) == (str(work / "data"), str(work / "run"))
    # the very command that was stopped, plus --resume: `--data data` is the stored path
    assert main([*TRAIN, "--resume"]) == 0
    assert (work / "run" / RUN_COMPLETE_FILE).is_file()
    # still refused: a setting that really differs, shown as the user typed it
    capsys.readouterr()
    assert main([*TRAIN, "--resume", "--epochs", "3"]) == 2
    assert "--epochs 3 differs from the run's 2" in capsys.readouterr().err

    # the finished run, used from another working directory with relative paths
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["eval", "../work/run"]) == 0
    assert len(list((work / "run").glob("eval_*_test.json"))) == 1
    assert main(["predict", "../work/run", "../work/data/test", "--output", "p.csv"]) == 0
    assert len((elsewhere / "p.csv").read_text().splitlines()) == 1 + 8
    assert main(["export", "../work/run", "--output", "model.onnx"]) == 0
    assert (elsewhere / "model.onnx").is_file()
    prune = ["prune", "--from", "../work/run", "--output-dir", "pruned", "--epochs", "1"]
    prune += ["--token-fractions", "0.5", "--segment-fractions", "0", "--no-progress"]
    assert main(prune) == 0
    report = json.loads((elsewhere / "pruned" / f"{PRUNING_REPORT_NAME}.json").read_text())
    assert report["source_run"] == str(work / "run")
    (point,) = report["points"]
    assert Path(point["run_dir"]).is_absolute()
    assert read_train_config(point["run_dir"]).data == str(work / "data")
    assert inspect_folder(elsewhere / "pruned").kind == "complete"


def test_a_sweep_with_a_relative_output_dir_stores_absolute_run_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_vtab_tree(tmp_path / "vt", {"train800": 6, "val200": 4, "test": 4}, num_classes=2)
    argv = ["sweep", "--data", "vtab:vt", "--method", "linear", "--epochs", "1"]
    argv += ["--batch-size", "4", "--base-lrs", "0.1", "--weight-decays", "0", "--seeds", "42"]
    argv += ["--output-dir", "sweeps", "--no-progress"]
    assert main(argv) == 0
    root = tmp_path / "sweeps" / "vt" / "linear"
    records = sorted(root.rglob(TRIAL_RECORD_FILE))
    assert [p.parent.relative_to(root).as_posix() for p in records] == [
        "final/seed42",
        "grid/lr0.1_wd0",
    ]
    for path in records:
        record = json.loads(path.read_text())
        assert record["run_dir"] == str(path.parent)
        assert record["config"]["output_dir"] == str(path.parent)
        assert record["config"]["data"] == f"vtab:{tmp_path / 'vt'}"
        assert (path.parent / TRAIN_CONFIG_FILE).is_file()
    summary = json.loads((root / "sweep.json").read_text())
    assert summary["status"] == "complete" and summary["data"] == f"vtab:{tmp_path / 'vt'}"
    # run again from elsewhere with the absolute folder: every trial is reused
    monkeypatch.chdir(tmp_path / "vt")
    before = {p: p.stat().st_mtime_ns for p in records}
    argv[argv.index("vtab:vt")] = f"vtab:{tmp_path / 'vt'}"
    argv[argv.index("sweeps")] = str(tmp_path / "sweeps")
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in records} == before
