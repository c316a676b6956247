"""Training curves (TensorBoard event files in <run>/tb, continued by a resumed run
without a step twice) and progress bars that write whole lines into log files."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.summary.writer.record_writer import RecordWriter

from e2vpt.cli.main import build_parser
from e2vpt.cli.run_config import config_from_args
from e2vpt.data import Task
from e2vpt.errors import Interrupted
from e2vpt.progressbars import milestone, progress_bar
from e2vpt.runs import TENSORBOARD_DIR
from e2vpt.training.config import TrainConfig
from e2vpt.training.session import TrainHooks
from e2vpt.training.tracking import TensorBoardTracker, Tracker, open_tracker
from e2vpt.training.trainer import train
from tests.conftest import small_builtin_task, stop_after

EPOCHS, STEPS = 3, 2  # 32 training images, batches of 16


@pytest.fixture(scope="module")
def task() -> Task:
    return small_builtin_task("position", (32, 16, 16))


def config(out: Path, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = dict(
        output_dir=str(out),
        method="vpt-shallow",
        method_config={"tokens": 2},
        epochs=EPOCHS,
        warmup_epochs=1,
        batch_size=16,
        progress=False,
    )
    return TrainConfig(**{**values, **overrides})


def curves(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Tag → (step, value) as TensorBoard reads the folder (purges applied)."""
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def raw_scalar_count(log_dir: Path, tag: str) -> int:
    """How many values of ``tag`` the event files hold, purged ones included."""
    count = 0
    for path in log_dir.iterdir():
        for event in EventFileLoader(str(path)).Load():
            count += sum(1 for v in event.summary.value if v.tag == tag)
    return count


def test_a_resumed_run_continues_its_curves_without_a_step_twice(
    tmp_path: Path, task: Task, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    # the state is saved every 2 epochs: epoch 3 is logged, lost and trained again
    cut = config(out, state_every=2)
    with pytest.raises(Interrupted, match="saved after epoch 2 of 3"):
        train(cut, task=task, on_epoch=stop_after(3))
    capsys.readouterr()
    train(config(out, state_every=2, progress=True), task=task, existing="resume")
    log_dir = out / TENSORBOARD_DIR
    assert len(list(log_dir.iterdir())) == 2  # one event file per session

    seen = curves(log_dir)
    updates = list(range(1, EPOCHS * STEPS + 1))
    assert [s for s, _ in seen["train/loss"]] == updates
    assert [s for s, _ in seen["train/lr"]] == updates
    epoch_ends = [STEPS * e for e in range(1, EPOCHS + 1)]
    for tag in ("epoch/train_loss", "epoch/train_top1", "epoch/val_top1", "epoch/lr"):
        assert [s for s, _ in seen[tag]] == epoch_ends, tag
    assert [v for _, v in seen["epoch/epoch"]] == [1.0, 2.0, 3.0]
    assert [s for s, _ in seen["eval/test_top1"]] == [EPOCHS * STEPS]
    rows = json.loads((out / "metrics.json").read_text())
    for (_, logged), row in zip(seen["epoch/val_top1"], rows, strict=True):
        assert logged == pytest.approx(row["val_top1"])
    assert seen["train/lr"][0][1] < seen["train/lr"][STEPS][1]  # the warm-up is on the curve
    # the interrupted session's epoch 3 is in the files, and purged by the reader
    assert raw_scalar_count(log_dir, "train/loss") == len(updates) + STEPS

    # stderr is captured, not a terminal: one whole line per epoch, no bar redrawn
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("e2vpt: train vpt-shallow")]
    assert [line.split(": ")[2].split(" ")[0] for line in lines] == ["6/6"]
    assert "epoch 3, loss" in lines[0] and ", val " in lines[0]


class Recorder(Tracker):
    def __init__(self) -> None:
        self.logged: list[tuple[int, dict[str, float]]] = []

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        self.logged.append((step, dict(scalars)))


def test_off_or_not_installed_no_curves_and_a_callers_tracker_still_gets_them(
    tmp_path: Path,
    task: Task,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = build_parser({"train"}).parse_args(["train", "--no-tensorboard"])
    assert config_from_args(args, ["--no-tensorboard"]).tensorboard is False

    recorder = Recorder()
    train(config(tmp_path / "off", epochs=1, tensorboard=False), task=task,
          hooks=TrainHooks(tracker=recorder))  # fmt: skip
    assert not (tmp_path / "off" / TENSORBOARD_DIR).exists()
    assert [step for step, s in recorder.logged if "train/loss" in s] == [1, 2]
    assert any("epoch/val_top1" in s for _, s in recorder.logged)

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` fails
    assert not open_tracker(tmp_path / "missing", True, is_main=True, first_update=1).active
    assert not (tmp_path / "missing" / TENSORBOARD_DIR).exists()
    err = capsys.readouterr().err
    assert "pip install 'e2vpt[tensorboard]'" in err and "`tensorboard` off" in err


def test_a_failing_writer_says_so_once_and_the_run_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker = TensorBoardTracker(tmp_path / "tb", purge_step=1)

    def full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    # the disk fills up under TensorBoard's writer thread
    monkeypatch.setattr(RecordWriter, "write", full)
    for step in range(1, 4):
        tracker.log(step, {"train/loss": 1.0})
    tracker.close()  # the failure surfaces by the close at the latest
    tracker.log(4, {"train/loss": 1.0})  # stopped: nothing more is tried
    err = capsys.readouterr().err
    assert err.count("stopped: [Errno 28] No space left on device") == 1
    assert "Traceback" not in err and not tracker.active


def test_progress_bars_write_whole_lines_when_stderr_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with progress_bar(total=6, show=True, desc="decode", unit="img", every=3) as bar:
        for _ in range(6):
            bar.update(1)
    assert list(progress_bar(range(4), show=True, desc="trials", unit="trial")) == [0, 1, 2, 3]
    quiet = progress_bar(total=2, show=False, desc="hidden")
    quiet.update(2)
    milestone(quiet)
    quiet.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    assert [re.sub(r" \(\d+ s\)$", "", line) for line in err.splitlines()] == [
        "e2vpt: decode: 3/6 img",
        "e2vpt: decode: 6/6 img",
        "e2vpt: trials: 4/4 trial",
    ]
