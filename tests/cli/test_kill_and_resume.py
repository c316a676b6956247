"""SIGKILL at seeded moments of ``e2vpt train``, ``sweep`` and ``prune``, then the resume
(``--resume``; the same sweep or prune command again): it always ends as the run that was
never killed, and nothing the kill left half-written is trusted by a later command.

Two kinds of moment, each drawn from a seeded generator. ``rename``: the points where a
kill can leave a difference on disk. Every file e2vpt writes is renamed into place
(``os.replace``), so the child process kills itself with SIGKILL just before or just
after its k-th rename, k drawn over all of the command's renames (counted by an
uninterrupted run of it: the reference the resumed runs must equal). ``delay``: the test
kills the child after a delay drawn within the reference run's duration, wherever that
lands (mid-computation, mid-write of a temp file; a child that finished first is fine
too). The children are forked (no import cost); the data cache is written afresh in every
run, so its files are among the moments. One torch thread: a forked child may not use
the OpenMP pool its parent started, and the comparisons are bit for bit."""

from __future__ import annotations

import json
import os
import random
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
from tests.conftest import one_torch_thread, write_tiny_vtab

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the children are forked")

# kind:seed. The rename seeds are drawn so that they fall in different phases (with
# today's rename counts; other counts move them, and the test holds wherever they fall):
# train: the cache entry written, mid-run, the checkpoint written; sweep: a trial
# finished but not its record, the grid done but not its summary; prune: a grid point's
# run, the selected checkpoint being copied.
TRAIN_KILLS = ("rename:2", "rename:5", "rename:9", "delay:1")
SWEEP_KILLS = ("rename:5", "rename:11", "delay:2")
PRUNE_KILLS = ("rename:7", "rename:11", "delay:3")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_vtab(tmp_path_factory.mktemp("kills") / "tiny")


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


@dataclass(frozen=True)
class Reference:
    """The uninterrupted run: how many files it renamed into place, how long it took."""

    renames: int
    seconds: float


def reference_run(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> Reference:
    renames = []
    replace = os.replace

    def counting(src: str, dst: str) -> None:
        renames.append(dst)
        replace(src, dst)

    start = time.perf_counter()
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", counting)
        assert main(argv) == 0
    return Reference(len(renames), time.perf_counter() - start)


def killed(argv: list[str], moment: str, reference: Reference) -> None:
    """``main(argv)`` in a forked child, SIGKILLed at ``moment`` (see the module's
    docstring)."""
    kind, seed = moment.split(":")
    rng = random.Random(int(seed))
    if kind == "rename":
        at, after = rng.randint(1, reference.renames), rng.random() < 0.5
        status = _wait(_fork(argv, lambda: _die_at_rename(at, after)))
    else:
        pid = _fork(argv, lambda: None)
        time.sleep(rng.uniform(0, reference.seconds))
        os.kill(pid, signal.SIGKILL)  # a child that has exited is a zombie until waited
        status = _wait(pid)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            return  # it finished first
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def _fork(argv: list[str], prepare: Callable[[], None]) -> int:
    with warnings.catch_warnings():  # Python 3.12+ warns about forking with threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            quiet = os.open(os.devnull, os.O_WRONLY)
            os.dup2(quiet, 1)
            os.dup2(quiet, 2)
            prepare()
            code = main(argv)
        finally:
            os._exit(code)
    return pid


def _wait(pid: int) -> int:
    return os.waitpid(pid, 0)[1]


def _die_at_rename(at: int, after: bool) -> None:
    """From now on this process SIGKILLs itself at its ``at``-th rename."""
    replace, count = os.replace, 0

    def dying(src: str, dst: str) -> None:
        nonlocal count
        count += 1
        if count == at and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        replace(src, dst)
        if count == at:
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = dying


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
    measured = reference_run(train_argv(data, reference), monkeypatch)
    expected = load_file(reference / ADAPTER_TENSORS_FILE)
    for n, moment in enumerate(TRAIN_KILLS):
        run, cache = tmp_path / f"run-{n}", tmp_path / f"cache-{n}"
        fresh_cache(monkeypatch, cache)
        killed(train_argv(data, run), moment, measured)
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
        assert all(torch.equal(got[k], expected[k]) for k in expected), moment
        for key in ("val_top1", "eval_top1"):
            assert results(run)[key] == results(reference)[key]


def results(run: Path) -> dict:
    return json.loads((run / RESULTS_FILE).read_text())


def test_sweep_killed_anywhere_is_resumed_by_the_same_command(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh_cache(monkeypatch, tmp_path / "cache-reference")
    measured = reference_run(sweep_argv(data, tmp_path / "reference"), monkeypatch)
    expected = sweep_summary(tmp_path / "reference")
    for n, moment in enumerate(SWEEP_KILLS):
        out, cache = tmp_path / f"sweep-{n}", tmp_path / f"cache-{n}"
        fresh_cache(monkeypatch, cache)
        killed(sweep_argv(data, out), moment, measured)
        assert_nothing_partial_is_trusted(out, cache)
        assert main(sweep_argv(data, out)) == 0
        assert sweep_summary(out) == expected, moment


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
    measured = reference_run(prune_argv(source, tmp_path / "reference"), monkeypatch)
    expected = pruning_summary(tmp_path / "reference")
    for n, moment in enumerate(PRUNE_KILLS):
        out, cache = tmp_path / f"pruned-{n}", tmp_path / f"cache-{n}"
        fresh_cache(monkeypatch, cache)
        killed(prune_argv(source, out), moment, measured)
        assert_nothing_partial_is_trusted(out, cache)
        assert main(prune_argv(source, out)) == 0
        assert pruning_summary(out) == expected, moment
        e2vpt.load(out)  # the selected point's checkpoint, whole


def pruning_summary(out: Path) -> dict:
    report = json.loads((out / "pruning_report.json").read_text())
    return {
        "selected": report["selected"]["plan"],
        "val": [p["val_top1"] for p in report["points"]],
        "test": [p["eval_top1"] for p in report["points"]],
    }
