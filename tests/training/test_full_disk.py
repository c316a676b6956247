"""A full disk: one line naming the folder (exit 2), nothing half-written kept, no run
folder or cache entry that counts as complete, and the run resumes once there is room.
On a real small tmpfs where this process may mount one (root on Linux), and everywhere
with the disk's answer simulated (ENOSPC from the writes' fsync)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import e2vpt
from e2vpt.cli.main import main
from e2vpt.data.cache import CACHE_ENV, META_FILE
from e2vpt.runs import inspect_folder
from tests.conftest import one_torch_thread, write_tiny_vtab

EPOCHS = 2


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_vtab(tmp_path_factory.mktemp("full-disk") / "tiny")


def train_args(data: Path, run: Path, *more: str) -> list[str]:
    return [
        "train",
        *("--data", f"vtab:{data}", "--output-dir", str(run), "--method", "e2vpt"),
        *("--visual-tokens", "4", "--kv-tokens", "2", "--epochs", str(EPOCHS)),
        *("--warmup-epochs", "0", "--batch-size", "12", "--no-progress", *more),
    ]


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The command's one error line (notices may come before it)."""
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("e2vpt train: error: ")]
    assert len(errors) == 1 and err[-1] == errors[0] and "Traceback" not in "\n".join(err)
    return errors[0]


def hidden_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.is_file() and p.name != ".lock"]


def finish(data: Path, run: Path) -> None:
    """With room again, the run goes on and ends complete and loadable."""
    resumable = inspect_folder(run).kind == "incomplete"
    assert main(train_args(data, run, "--resume") if resumable else train_args(data, run)) == 0
    assert inspect_folder(run).kind == "complete"
    e2vpt.load(run)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted after the test."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8); the simulated test runs")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip()}); the simulated test runs")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_tmpfs_is_one_line_and_nothing_that_counts_as_complete(
    small_disk: Path,
    data: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run, cache = small_disk / "run", small_disk / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    free = shutil.disk_usage(small_disk).free
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (free - 40 * 1024))  # room for the config, not the state
    assert main(train_args(data, run)) == 2
    line = error_line(capsys)
    assert line.startswith(f"e2vpt train: error: cannot write train_state.pt in {run}: no space ")
    assert inspect_folder(run).kind == "incomplete" and not hidden_files(small_disk)
    # the cache had no room either: decoded in memory, no entry that counts
    assert not list(cache.rglob(META_FILE))
    filler.unlink()
    finish(data, run)
    assert list(cache.rglob(META_FILE))  # with room, the cache is written too


@pytest.mark.parametrize(
    ("full_from", "file"),
    [(1, "train_config.yaml"), (7, "train_state.pt"), (11, "run_complete.json")],
    ids=["first-write", "epoch-2-state", "the-marker"],
)
def test_a_disk_that_fills_up_mid_run(
    full_from: int,
    file: str,
    data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Writes 1 … 11 of a 2-epoch run: the config, per epoch metrics.json, metrics.csv
    and the state, then the tensors, the recipe, results.json and the marker. From
    write ``full_from`` on, every write meets ENOSPC."""
    run = tmp_path / "run"
    writes = []

    def fsync(fd: int) -> None:
        writes.append(fd)
        if len(writes) >= full_from:
            raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr("e2vpt.files.os.fsync", fsync)
        assert main(train_args(data, run, "--no-data-cache")) == 2
    line = error_line(capsys)
    assert line.startswith(f"e2vpt train: error: cannot write {file} in {run}: no space left ")
    assert "free some space there, or write to another folder" in line
    if full_from > 4:  # an epoch was saved: the line says how to go on
        assert line.endswith(f"resume it with `e2vpt train --resume --output-dir {run}`")
    assert inspect_folder(run).kind != "complete" and not hidden_files(run)
    finish(data, run)
