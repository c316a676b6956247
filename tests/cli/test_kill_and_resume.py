"""SIGKILL at seeded moments of ``e2vpt train``, ``sweep`` and ``prune``, then the resume
(``--resume``; the same sweep or prune command again): it always ends as the run that was
never killed, and nothing the kill left half-written is trusted by a later command.

The moments are the points where a kill can leave a difference on disk: every file e2vpt
writes is renamed into place (``os.replace``), so a child process (forked: no import
cost) kills itself with SIGKILL just before or just after its k-th rename, k drawn from a
seeded generator over all of the command's renames (counted by an uninterrupted run of
it, the reference the resumed runs must equal). The data cache is written afresh in
every run, so its files are among the moments too. One torch thread: a forked child may
not use the OpenMP pool its parent started, and the comparisons are bit for bit."""

from __future__ import annotations

import json
import os
import random
import signal
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import e2vpt
from e2vpt.cli.main import main
from e2vpt.data.cache import CACHE_ENV, IMAGES_FILE, META_FILE
from e2vpt.runs import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_TENSORS_FILE,
    PRUNING_POINT_FILE,
    RESULTS_FILE,
    TRIAL_RECORD_FILE,
    inspect_folder,
)
from tests.conftest import write_vtab_tree

# the seeds of the moments, drawn so that they fall in different phases (with today's
# rename counts; other counts move them, the test holds wherever they fall)
TRAIN_KILLS = (2, 5, 9)  # the cache entry written; mid-run; the checkpoint written
SWEEP_KILLS = (5, 11)  # a trial finished, its record not; the grid done, its summary not
PRUNE_KILLS = (7, 11)  # a grid point's run; the selected checkpoint being copied


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("kills") / "tiny"  # classes from its labels: 2
    write_vtab_tree(folder, {"train800": 12, "val200": 4, "test": 4}, num_classes=2)
    return folder


def train_argv(data: Path, out: Path) -> list[str]:
    return [
        "train",
        *("--data", f"vtab:{data}", "--output-dir", str(out), "--method", "e2vpt"),
        *("--visual-tokens", "4", "--kv-tokens", "2", "--epochs", "3", "--warmup-epochs", "0"),
        *("--batch-size", "12", "--no-progress"),
    ]


def sweep_argv(data: Path, out: Path) -> list[str]:
    return [
        "sweep",
        *("--data", f"vtab:{data}", "--output-dir", str(out), "--method", "linear"),
        *("--epochs", "2", "--batch-size", "12", "--base-lrs", "0.1", "1", "--weight-decays"),
        *("0", "--seeds", "1", "--no-progress"),
    ]


def prune_argv(source: Path, out: Path) -> list[str]:
    return [
        "prune",
        *("--from", str(source), "--output-dir", str(out), "--epochs", "1"),
        *("--token-fractions", "0.25", "0.5", "--segment-fractions", "0", "--no-progress"),
    ]


def fresh_cache(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(path))


def counted_run(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """Run ``argv`` uninterrupted; the number of files it renamed into place."""
    renames = []
    replace = os.replace

    def counting(src: str, dst: str) -> None:
        renames.append(dst)
        replace(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", counting)
        assert main(argv) == 0
    return len(renames)


def killed(argv: list[str], at: int, after: bool) -> None:
    """``main(argv)`` in a forked child that SIGKILLs itself at its ``at``-th rename,
    just before it or just after it."""
    with warnings.catch_warnings():  # Python 3.12+ warns about forking with threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            quiet = os.open(os.devnull, os.O_WRONLY)
            os.dup2(quiet, 1)
            os.dup2(quiet, 2)
            os.replace = _dying_replace(os.replace, at, after)
            code = main(argv)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def _dying_replace(
    replace: Callable[[str, str], None], at: int, after: bool
) -> Callable[[str, str], None]:
    count = 0

    def dying(src: str, dst: str) -> None:
        nonlocal count
        count += 1
        if count == at and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        replace(src, dst)
        if count == at:
            os.kill(os.getpid(), signal.SIGKILL)

    return dying


def moment(seed: int, renames: int) -> tuple[int, bool]:
    rng = random.Random(seed)
    return rng.randint(1, renames), rng.random() < 0.5


def assert_nothing_partial_is_trusted(root: Path, cache: Path) -> None:
    """What a kill left: every JSON file whole, every folder that counts as a finished
    run loadable (its recipe's hash matches its tensors), every record (trial, pruning
    point) beside a finished run, every cache entry that counts complete."""
    for path in root.rglob("*.json"):
        if not path.name.startswith("."):
            json.loads(path.read_text())
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        if inspect_folder(folder).kind == "complete" and (folder / ADAPTER_CONFIG_FILE).is_file():
            e2vpt.load(folder)
        for record in (TRIAL_RECORD_FILE, PRUNING_POINT_FILE):
            if (folder / record).is_file() and not json.loads((folder / record).read_text()).get(
                "diverged"
            ):
                assert inspect_folder(folder).kind == "complete", folder / record
    for meta in cache.rglob(META_FILE):
        images = np.load(meta.parent / IMAGES_FILE, mmap_mode="r")
        assert images.shape[0] == json.loads(meta.read_text())["count"]


def test_train_killed_anywhere_resumes_to_the_same_run(
    data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fresh_cache(monkeypatch, tmp_path / "cache-reference")
    reference = tmp_path / "reference"
    renames = counted_run(train_argv(data, reference), monkeypatch)
    expected = load_file(reference / ADAPTER_TENSORS_FILE)
    for seed in TRAIN_KILLS:
        run, cache = tmp_path / f"run-{seed}", tmp_path / f"cache-{seed}"
        fresh_cache(monkeypatch, cache)
        killed(train_argv(data, run), *moment(seed, renames))
        assert_nothing_partial_is_trusted(run, cache)
        capsys.readouterr()
        code = main(["train", "--resume", "--output-dir", str(run), "--no-progress"])
        if code == 2:  # killed before the run's first file: one line says so
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "holds no run to resume" in err[0]
            code = main(train_argv(data, run))
        assert code == 0 and inspect_folder(run).kind == "complete"
        got = load_file(run / ADAPTER_TENSORS_FILE)
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected), seed
        for key in ("val_top1", "eval_top1"):
            assert results(run)[key] == results(reference)[key]


def results(run: Path) -> dict:
    return json.loads((run / RESULTS_FILE).read_text())


def test_sweep_killed_anywhere_is_resumed_by_the_same_command(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh_cache(monkeypatch, tmp_path / "cache-reference")
    renames = counted_run(sweep_argv(data, tmp_path / "reference"), monkeypatch)
    expected = sweep_summary(tmp_path / "reference")
    for seed in SWEEP_KILLS:
        out, cache = tmp_path / f"sweep-{seed}", tmp_path / f"cache-{seed}"
        fresh_cache(monkeypatch, cache)
        killed(sweep_argv(data, out), *moment(seed, renames))
        assert_nothing_partial_is_trusted(out, cache)
        assert main(sweep_argv(data, out)) == 0
        assert sweep_summary(out) == expected, seed


def sweep_summary(out: Path) -> dict:
    summary = json.loads(next(out.rglob("sweep.json")).read_text())
    return {
        "status": summary["status"],
        "selected": summary["selected"],
        "val": [t["val_top1"] for t in summary["grid"]["trials"]],
        "test": [r["test_top1_mean"] for r in summary["results"]],
    }


def test_prune_killed_anywhere_is_resumed_by_the_same_command(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "source"
    assert main(train_argv(data, source)) == 0
    fresh_cache(monkeypatch, tmp_path / "cache-reference")
    renames = counted_run(prune_argv(source, tmp_path / "reference"), monkeypatch)
    expected = pruning_summary(tmp_path / "reference")
    for seed in PRUNE_KILLS:
        out, cache = tmp_path / f"pruned-{seed}", tmp_path / f"cache-{seed}"
        fresh_cache(monkeypatch, cache)
        killed(prune_argv(source, out), *moment(seed, renames))
        assert_nothing_partial_is_trusted(out, cache)
        assert main(prune_argv(source, out)) == 0
        assert pruning_summary(out) == expected, seed
        e2vpt.load(out)  # the selected point's checkpoint, whole


def pruning_summary(out: Path) -> dict:
    report = json.loads((out / "pruning_report.json").read_text())
    return {
        "selected": report["selected"]["plan"],
        "val": [p["val_top1"] for p in report["points"]],
        "test": [p["eval_top1"] for p in report["points"]],
    }
