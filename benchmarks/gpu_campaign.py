"""The GPU campaign: one command that proves and measures e2vpt on a GPU, in steps that
fit short GPU windows (commands of at most 10 minutes), each resumable and skippable.

Steps, in order (results under one folder, ``campaign/`` by default):

1. ``tests``     the GPU tests (``pytest -m gpu tests/gpu``)
2. ``speed``     benchmarks/speed.py: ViT-B/16, batch 64 and 128, bf16, every method
3. ``pruning``   benchmarks/pruning_speed.py: E²VPT before and after pruning
4. ``pretrain``  a stronger demo backbone (scripts/pretrain_demo_backbone.py, a long
                 schedule with strong augmentation, the same architecture so the CPU
                 quickstart costs the same)
5. ``mini``      the mini-benchmark on the new backbone: 100 epochs, a wider lr grid,
                 several trials at once on the one GPU
6. ``serve``     benchmarks/serve.py: e2vpt serve under load on the GPU (FastAPI, uvicorn
                 and their needs travel as wheels: the GPU machine lacks them)

A step that finished is skipped by the next ``run``; one stopped by its time budget
continues where it stopped. Where the data comes from and what travels:

    # here, with ../shared/data: the data the GPU steps read, and what to carry
    uv run python benchmarks/gpu_campaign.py prepare
    uv run python benchmarks/gpu_campaign.py carry           # the paths a GPU call carries
    # there (no network, no uv): one GPU window, then the results packed for the trip back
    PYTHONPATH=src python3 benchmarks/gpu_campaign.py run --budget-minutes 9; \\
        PYTHONPATH=src python3 benchmarks/gpu_campaign.py pack --into "$OUT"
    # here: unpack what came back (then `run` again in the next window, or commit)
    uv run python benchmarks/gpu_campaign.py unpack FILES...
    uv run python benchmarks/gpu_campaign.py status
    # on CPU, every step with tiny settings, in a few minutes (what CI runs):
    uv run python benchmarks/gpu_campaign.py run --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FOLDER = REPO / "campaign"
SMOKE_FOLDER = REPO / "campaign-smoke"
STATUS_FILE = "status.json"
SUMMARY_FILE = "campaign.md"
PART_BYTES = 15 * 2**20  # what comes back from a GPU machine: ≤ 8 files of ≤ 16 MiB
MAX_PARTS = 8
CARRY_BYTES = 64 * 2**20  # what travels to it: the working tree, carried paths included
CARRY_PATHS = 8
# a sweep's large checkpoints (full fine-tuning, partial) stay behind when packing: the
# finished runs' results.json are what a resumed sweep and the report read
PACK_MAX_SWEEP_FILE = 2 * 2**20
# the stronger demo backbone's recipe (GPU): ViT-Lite-style training from scratch
PRETRAIN_RECIPE = [
    "--epochs", "300", "--batch-size", "512", "--lr", "2e-3", "--weight-decay", "0.05",
    "--warmup-epochs", "10", "--label-smoothing", "0.1", "--mixup", "0.8", "--cutmix", "1.0",
    "--trivial-augment", "--random-erasing", "0.25",
]  # fmt: skip
PRETRAIN_SMOKE = [
    "--epochs", "2", "--batch-size", "64", "--limit-train", "512", "--limit-test", "256",
    "--mixup", "0.8", "--cutmix", "1.0", "--trivial-augment", "--random-erasing", "0.25",
    "--threads", "2",
]  # fmt: skip
MINI_TASKS = ["dtd10", "fashion_mnist", "mnist", "position", "orientation", "count"]
MINI_CARRIED_TASKS = ["fashion_mnist", "mnist"]
MINI_LR_FACTORS = ["0.04", "0.2", "1", "5", "25"]
MINI_TRIALS_PER_TASK = 3  # worker processes per task, all tasks at once on the one GPU
# seconds each step may take in one window when the window has that much left
# (speed: every row's peak memory comes from a fresh process of its own)
BUDGETS = {
    "tests": 150, "speed": 300, "pruning": 90, "pretrain": 480, "mini": 540, "serve": 240,
}  # fmt: skip
SMOKE_BUDGETS = {
    "tests": 300, "speed": 240, "pruning": 120, "serve": 240, "pretrain": 180, "mini": 480,
}  # fmt: skip
# what `e2vpt serve` needs beyond the GPU machine's packages, at uv.lock's versions
SERVE_WHEELS = (
    "fastapi", "starlette", "pydantic", "pydantic-core", "annotated-types",
    "typing-inspection", "uvicorn", "python-multipart",
)  # fmt: skip
WHEEL_PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_28_x86_64")


class CampaignError(Exception):
    """A problem with the campaign's inputs: one line, with the fix."""


def publish(target: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` beside ``target``, then rename it into place: a stopped write
    leaves no half-written file. (e2vpt.files does the same, but importing e2vpt loads
    torch and timm, seconds that `status` and `carry` need not pay.)"""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def publish_text(target: Path, text: str) -> None:
    publish(target, lambda tmp: tmp.write_text(text))


def publish_copy(source: Path, target: Path) -> None:
    publish(target, lambda tmp: shutil.copyfile(source, tmp))


@dataclass
class Context:
    folder: Path
    smoke: bool
    device: str  # cuda, or cpu in smoke mode
    python: str = sys.executable
    env: dict[str, str] = field(default_factory=dict)

    def path(self, *parts: str) -> Path:
        return self.folder.joinpath(*parts)


@dataclass
class Outcome:
    state: str  # done | partial | failed | waiting
    note: str = ""


@dataclass
class Step:
    name: str
    summary: str
    run: Callable[[Context, float], Outcome]
    needs: tuple[str, ...] = ()


# ---- running commands under a budget ---------------------------------------------------


def run_logged(
    commands: Sequence[Sequence[str]], log: Path, ctx: Context, timeout: float
) -> list[int | None]:
    """Run ``commands`` at once, output appended to ``log``; each exit status, or None
    for one stopped at ``timeout`` seconds (its whole process group is killed)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **ctx.env}
    src = str(REPO / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    with log.open("a") as out:
        out.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        procs = []
        for command in commands:
            out.write("$ " + " ".join(command) + "\n")
            out.flush()
            procs.append(
                subprocess.Popen(
                    list(command),
                    cwd=REPO,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + timeout
        codes: list[int | None] = []
        for proc in procs:
            try:
                codes.append(proc.wait(timeout=max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(None)
        for proc, code in zip(procs, codes, strict=True):
            if code is None:
                _kill_group(proc)
    return codes


def _kill_group(proc: subprocess.Popen) -> None:
    # SIGTERM, not SIGINT: a command started in the background ignores SIGINT; e2vpt
    # stops cleanly on SIGTERM, and every step's state is saved atomically anyway
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=20)
            return
        except subprocess.TimeoutExpired:
            continue


# ---- the steps -------------------------------------------------------------------------


def step_tests(ctx: Context, budget: float) -> Outcome:
    out = ctx.path("tests")
    command = [
        ctx.python, "-m", "pytest", "tests/gpu", "-m", "gpu", "-rs", "-o", "addopts=-q",
        "-p", "no:cacheprovider", f"--junitxml={out / 'junit.xml'}",
    ]  # fmt: skip (addopts: one process; the device machine has no pytest-xdist)
    if ctx.smoke:
        ctx.env["E2VPT_GPU_TESTS_ON_CPU"] = "1"
    (code,) = run_logged([command], out / "log.txt", ctx, budget)
    ctx.env.pop("E2VPT_GPU_TESTS_ON_CPU", None)
    if code is None:
        return Outcome("partial", f"stopped after {budget:.0f} s; the tests rerun whole")
    summary = [
        line.strip("= ")
        for line in (out / "log.txt").read_text().splitlines()
        if re.search(r"\d+ (passed|failed|skipped|error)", line)
    ]
    return Outcome("done" if code == 0 else "failed", summary[-1] if summary else f"exit {code}")


def run_whole(ctx: Context, command: list[str], log: Path, budget: float) -> Outcome:
    """A step that is one command, rerun whole when its budget stopped it."""
    (code,) = run_logged([command], log, ctx, budget)
    if code is None:
        return Outcome("partial", f"stopped after {budget:.0f} s; it reruns whole")
    return Outcome("done" if code == 0 else "failed", "" if code == 0 else f"exit {code}")


def step_speed(ctx: Context, budget: float) -> Outcome:
    out = ctx.path("speed")
    if ctx.smoke:
        sizes = ["--backbones", "demo", "--batch-sizes", "4", "--steps", "2", "--warmup", "1",
                 "--rows", "floor", "linear", "e2vpt"]  # fmt: skip
    else:
        sizes = ["--backbones", "vit-b16", "--batch-sizes", "64", "128"]
    command = [
        ctx.python, "benchmarks/speed.py", *sizes, "--device", ctx.device,
        "--precision", "bf16", "--results-dir", str(out),
    ]  # fmt: skip
    return run_whole(ctx, command, out / "log.txt", budget)


def step_pruning(ctx: Context, budget: float) -> Outcome:
    out = ctx.path("speed")
    if ctx.smoke:
        sizes = ["--backbones", "demo", "--tokens", "10", "--rounds", "1", "--sample-time",
                 "0.05", "--batch-size", "4"]  # fmt: skip
    else:
        sizes = ["--backbones", "vit-b16"]
    command = [
        ctx.python, "benchmarks/pruning_speed.py", *sizes, "--device", ctx.device,
        "--out", str(out / "pruning_speed"),
    ]  # fmt: skip
    return run_whole(ctx, command, out / "pruning_log.txt", budget)


def step_serve(ctx: Context, budget: float) -> Outcome:
    out = ctx.path("serve")
    log = out / "log.txt"
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        wheels = sorted(ctx.path("wheels").glob("*.whl"))
        if not wheels:
            return Outcome("failed", "no FastAPI here and no wheels carried (campaign/wheels)")
        site = out / "site"
        install = [
            ctx.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
            "--no-compile", "--upgrade", "--target", str(site), *map(str, wheels),
        ]  # fmt: skip
        (code,) = run_logged([install], log, ctx, 120)
        if code != 0:
            return Outcome("failed", "installing the carried wheels")
        ctx.env["PYTHONPATH"] = str(site)
    if ctx.smoke:
        load = ["--tasks", "2", "--concurrency", "2", "--requests", "16", "--warmup", "4",
                "--setups", "across", "per-task", "--images", "8"]  # fmt: skip
    else:
        load = ["--tasks", "4", "16", "--concurrency", "1", "8", "32"]
    command = [
        ctx.python, "benchmarks/serve.py", *load, "--device", ctx.device, "--out", str(out),
    ]  # fmt: skip
    outcome = run_whole(ctx, command, log, budget)
    ctx.env.pop("PYTHONPATH", None)
    return outcome


def pretrain_card(ctx: Context) -> dict[str, Any] | None:
    card = ctx.path("pretrain", "weights", "demo_vit_cifar10.json")
    return json.loads(card.read_text()) if card.is_file() else None


def step_pretrain(ctx: Context, budget: float) -> Outcome:
    data = ctx.path("data", "cifar10.tar.gz")
    if not data.is_file():
        raise CampaignError(
            f"{data} is missing: run `python benchmarks/gpu_campaign.py prepare` where "
            "../shared/data is (and carry it to the GPU machine)"
        )
    recipe = PRETRAIN_SMOKE if ctx.smoke else PRETRAIN_RECIPE
    command = [
        ctx.python, "scripts/pretrain_demo_backbone.py", "--data", str(data),
        "--work-dir", str(ctx.path("pretrain", "work")),
        "--out-dir", str(ctx.path("pretrain", "weights")),
        "--device", ctx.device, *recipe,
        "--time-budget", str(max(30.0, budget - 45.0)),  # its last epoch and save fit
    ]  # fmt: skip
    (code,) = run_logged([command], ctx.path("pretrain", "log.txt"), ctx, budget)
    card = pretrain_card(ctx)
    epochs = int(recipe[recipe.index("--epochs") + 1])
    done = card is not None and card["epochs_done"] >= epochs
    if card is not None:
        top1 = 100 * card["cifar10_test_top1"]
        note = f"epoch {card['epochs_done']}/{epochs}: CIFAR-10 test {top1:.2f} %"
    else:
        note = "no epoch finished yet"
    if done:
        return Outcome("done", note)
    if code not in (0, None):
        return Outcome("failed", f"exit {code}; {note}")
    return Outcome("partial", note + "; the next run continues it")


def step_mini(ctx: Context, budget: float) -> Outcome:
    weights = ctx.path("pretrain", "weights", "demo_vit_cifar10.safetensors")
    out = ctx.path("mini")
    common = [
        ctx.python, "benchmarks/mini_benchmark.py", "--out", str(out),
        "--source", str(ctx.path("data", "mini-source")),
        "--results", str(out / "results"), "--name", "mini_benchmark_gpu",
        "--weights", str(weights), "--device", ctx.device,
    ]  # fmt: skip
    if ctx.smoke:
        tasks = ["position"]
        settings = ["--methods", "linear", "e2vpt", "--epochs", "1", "--seeds", "42",
                    "--lr-factors", "1"]  # fmt: skip
        workers: list[str] = []
    else:
        tasks = MINI_TASKS
        settings = ["--epochs", "100", "--lr-factors", *MINI_LR_FACTORS, "--precision", "bf16"]
        workers = ["--devices", *[ctx.device] * MINI_TRIALS_PER_TASK]
    log = out / "log.txt"
    started = time.monotonic()
    (code,) = run_logged([[*common, "--tasks", *tasks, "--prepare-only"]], log, ctx, budget)
    if code != 0:
        return Outcome("failed" if code is not None else "partial", "preparing the tasks")
    left = budget - (time.monotonic() - started)
    commands = [[*common, *settings, *workers, "--tasks", task] for task in tasks]
    codes = run_logged(commands, log, ctx, left)  # every task at once on the one GPU
    report = [*common, "--tasks", *tasks, "--report-only"]
    run_logged([report], log, ctx, 120)
    finished = [t for t, c in zip(tasks, codes, strict=True) if c == 0]
    note = f"tasks finished: {len(finished)}/{len(tasks)}"
    if len(finished) == len(tasks):
        return Outcome("done", note)
    if any(c not in (0, None) for c in codes):
        return Outcome("failed", note + f"; exits {codes}")
    return Outcome("partial", note + "; the next run continues (finished trials are kept)")


STEPS = [
    Step("tests", "GPU tests (pytest -m gpu)", step_tests),
    Step("speed", "speed.py: ViT-B/16, batch 64/128, bf16, every method", step_speed),
    Step("pruning", "pruning_speed.py: E²VPT before/after pruning", step_pruning),
    Step("pretrain", "a stronger demo backbone (CIFAR-10)", step_pretrain),
    Step("mini", "mini-benchmark on the new backbone", step_mini, needs=("pretrain",)),
    Step("serve", "serve.py: e2vpt serve under load", step_serve),
]
STEP_NAMES = [s.name for s in STEPS]


# ---- status ------------------------------------------------------------------------------


def read_status(folder: Path) -> dict[str, Any]:
    path = folder / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else {"steps": {}}


def write_status(folder: Path, status: dict[str, Any]) -> None:
    publish_text(folder / STATUS_FILE, json.dumps(status, indent=2) + "\n")


def describe_device(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def run_campaign(
    ctx: Context,
    steps: Sequence[Step],
    budget_s: float,
    budgets: dict[str, float],
    force: Sequence[str] = (),
    announce: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the steps not done yet, in order, within ``budget_s`` seconds in all."""
    status = read_status(ctx.folder)
    states = status["steps"]
    status.setdefault("windows", []).append(
        {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "device": describe_device(ctx.device)}
    )
    began = time.monotonic()
    for step in steps:
        entry = states.setdefault(step.name, {"state": "new", "seconds": 0.0, "runs": 0})
        if entry["state"] == "done" and step.name not in force:
            announce(f"{step.name}: done before, skipped ({entry.get('note', '')})")
            continue
        blocked = [n for n in step.needs if states.get(n, {}).get("state") != "done"]
        if blocked:
            entry.update(state="waiting", note=f"waits for {', '.join(blocked)}")
            announce(f"{step.name}: waits for {', '.join(blocked)}")
            continue
        left = budget_s - (time.monotonic() - began)
        if left < 30:
            announce(f"{step.name}: no time left in this window ({left:.0f} s)")
            continue
        allowed = min(budgets[step.name], left)
        announce(f"{step.name}: {step.summary} (up to {allowed:.0f} s)")
        start = time.monotonic()
        outcome = step.run(ctx, allowed)
        seconds = time.monotonic() - start
        entry.update(
            state=outcome.state,
            note=outcome.note,
            seconds=round(entry["seconds"] + seconds, 1),
            runs=entry["runs"] + 1,
            device=describe_device(ctx.device),
        )
        write_status(ctx.folder, status)
        announce(f"{step.name}: {outcome.state} in {seconds:.0f} s {outcome.note}")
    write_status(ctx.folder, status)
    write_summary(ctx.folder, status)
    return status


def write_summary(folder: Path, status: dict[str, Any]) -> None:
    """campaign.md: every step's state, then the results tables the steps wrote."""
    lines = [
        "# GPU campaign",
        "",
        "| step | state | runs | seconds | note |",
        "|---|---|---|---|---|",
    ]
    for name in STEP_NAMES:
        e = status["steps"].get(name)
        if e:
            lines.append(
                f"| {name} | {e['state']} | {e['runs']} | {e['seconds']:.0f} "
                f"| {e.get('note', '')} |"
            )
    lines += ["", "Windows: " + "; ".join(w["device"] for w in status.get("windows", [])), ""]
    for pattern in (
        "speed/speed_*.md",
        "mini/results/mini_benchmark_gpu.md",
        "pretrain/weights/README.md",
    ):
        for path in sorted(folder.glob(pattern)):
            lines += [f"## {path.relative_to(folder)}", "", path.read_text().strip(), ""]
    publish_text(folder / SUMMARY_FILE, "\n".join(lines) + "\n")


# ---- moving data and results between machines -------------------------------------------


def prepare(folder: Path, source: Path) -> list[str]:
    """Copy into ``folder/data`` what the GPU steps read and the GPU machine lacks:
    CIFAR-10 (pretraining) and the mini-benchmark's real-image tasks (dtd10 as its
    tarball; fashion_mnist and mnist as their small prepared task folders)."""
    missing = [n for n in ("cifar10.tar.gz", "dtd10.tar.gz", "fashion-mnist", "mnist-test")
               if not (source / n).exists()]  # fmt: skip
    if missing:
        raise CampaignError(
            f"{source} lacks {', '.join(missing)}; pass --source (the project's shared data)"
        )
    data = folder / "data"
    (data / "mini-source").mkdir(parents=True, exist_ok=True)
    done = []
    for src, dst in ((source / "cifar10.tar.gz", data / "cifar10.tar.gz"),
                     (source / "dtd10.tar.gz", data / "mini-source" / "dtd10.tar.gz")):  # fmt: skip
        if not dst.is_file():
            publish_copy(src, dst)
        done.append(str(dst.relative_to(folder)))
    sys.path.insert(0, str(REPO / "benchmarks"))
    import mini_benchmark

    # all tasks at once, as the CPU mini-benchmark writes them (the same splits); only
    # fashion_mnist and mnist travel: dtd10 is rebuilt there from its tarball (as
    # PNGs it is 36 MB), the generated tasks are generated there
    mini_benchmark.prepare(source, folder / "mini" / "data")
    done += [f"mini/data/{t}" for t in MINI_CARRIED_TASKS]
    done += download_serve_wheels(folder / "wheels")
    return done


def locked_versions() -> dict[str, str]:
    import tomllib

    lock = tomllib.loads((REPO / "uv.lock").read_text())
    return {p["name"]: p["version"] for p in lock.get("package", [])}


def find_pip() -> str:
    """A Python with pip: this one, else the one its virtual environment was made from
    (uv's environments have no pip)."""
    base = getattr(sys, "_base_executable", None)
    for python in dict.fromkeys(p for p in (sys.executable, base, shutil.which("python3")) if p):
        check = subprocess.run([python, "-m", "pip", "--version"], capture_output=True)
        if check.returncode == 0:
            return python
    raise CampaignError("no pip here to download the serving wheels: install pip")


def download_serve_wheels(wheels: Path) -> list[str]:
    """The GPU machine's Python (3.12, x86-64) lacks FastAPI and uvicorn: their wheels
    travel (pip download from the package registry, at uv.lock's versions)."""
    versions = locked_versions()
    wheels.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={versions[name]}" for name in SERVE_WHEELS]
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    command = [
        find_pip(), "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
        "--python-version", "3.12", "--implementation", "cp", *platforms,
        "-d", str(wheels), *pins,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise CampaignError(
            f"could not download the serving wheels ({done.stderr.strip().splitlines()[-1:]}); "
            "the package registry must be reachable from here"
        )
    return [str(w.relative_to(wheels.parent)) for w in sorted(wheels.glob("*.whl"))]


def carry_paths(folder: Path, status: dict[str, Any]) -> list[str]:
    """The paths (relative to the repo) a GPU call must carry for the steps not done."""
    states = status["steps"]
    pending = [n for n in STEP_NAMES if states.get(n, {}).get("state") != "done"]
    rel = folder.relative_to(REPO)
    paths = [str(rel / STATUS_FILE)] if (folder / STATUS_FILE).is_file() else []
    if "serve" in pending:
        paths += [str(rel / "wheels")]
    if "pretrain" in pending:
        paths += [str(rel / "data" / "cifar10.tar.gz")]
        if (folder / "pretrain").is_dir():
            paths += [str(rel / "pretrain")]
    if "mini" in pending:
        paths += [str(rel / "data" / "mini-source")]
        paths += [str(rel / "mini" / "data" / t) for t in MINI_CARRIED_TASKS]
        for name in ("sweeps", "results"):
            if (folder / "mini" / name).is_dir():
                paths += [str(rel / "mini" / name)]
        if "pretrain" not in pending:
            paths += [str(rel / "pretrain" / "weights")]
    return paths


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def pack_skip(folder: Path) -> Callable[[Path], bool]:
    """What stays behind when packing: the data, the decoded-image cache, and a sweep's
    large checkpoints (their runs' results are kept)."""

    def skip(path: Path) -> bool:
        rel = path.relative_to(folder).parts
        if rel[0] in ("data", "wheels") or rel[:2] in (("mini", "data"), ("serve", "site")):
            return True
        if path.suffix == ".npz":
            return True
        return rel[:2] == ("mini", "sweeps") and path.stat().st_size > PACK_MAX_SWEEP_FILE

    return skip


def pack(folder: Path, into: Path, part_bytes: int = PART_BYTES) -> list[Path]:
    """The results as one tar.gz, cut into parts of ≤ part_bytes (≤ 8 files)."""
    if not folder.is_dir():
        raise CampaignError(f"{folder} holds no campaign results; run the campaign first")
    skip = pack_skip(folder)
    into.mkdir(parents=True, exist_ok=True)
    archive = into / "campaign.tar.gz.tmp"
    skipped = 0
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                if skip(path):
                    skipped += 1
                    continue
                tar.add(path, arcname=str(path.relative_to(folder)))
    size = archive.stat().st_size
    count = max(1, -(-size // part_bytes))
    if count > MAX_PARTS:
        archive.unlink()
        raise CampaignError(
            f"the packed results are {size / 2**20:.0f} MiB, more than {MAX_PARTS} parts of "
            f"{part_bytes / 2**20:.0f} MiB; remove large files from {folder} first"
        )
    parts = []
    with archive.open("rb") as src:
        for i in range(count):
            part = into / f"campaign.tar.gz.part{i:02d}"
            chunk = src.read(part_bytes)
            publish(part, lambda tmp, chunk=chunk: tmp.write_bytes(chunk))
            parts.append(part)
    archive.unlink()
    print(f"packed {folder} into {count} file(s) in {into} ({size / 2**20:.1f} MiB; "
          f"{skipped} file(s) left out: data, caches, large sweep checkpoints)")  # fmt: skip
    return parts


def unpack(parts: Sequence[Path], folder: Path) -> None:
    """Join the parts and extract them over ``folder`` (newer results replace older)."""
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise CampaignError(f"no such file: {', '.join(missing)}")
    names = sorted(parts, key=lambda p: p.name)
    expected = [f"campaign.tar.gz.part{i:02d}" for i in range(len(names))]
    if [p.name for p in names] != expected:
        raise CampaignError(
            f"expected the parts {', '.join(expected)}, got {', '.join(p.name for p in names)}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    joined = folder / ".unpack.tar.gz"
    with joined.open("wb") as out:
        for part in names:
            out.write(part.read_bytes())
    try:
        with tarfile.open(joined) as tar:
            tar.extractall(folder, filter="data")
    except (tarfile.TarError, EOFError) as err:
        raise CampaignError(
            f"the parts do not make a whole archive ({err}); fetch them again"
        ) from err
    finally:
        joined.unlink()
    print(f"unpacked {len(names)} part(s) into {folder}")


# ---- shipping the new demo backbone -------------------------------------------------------

QUICKSTART_LIMIT_S = 300.0  # the quickstart must still finish within 5 minutes on 2 cores
BUNDLED = REPO / "src" / "e2vpt" / "backbones" / "weights"
WEIGHT_FILES = ("demo_vit_cifar10.safetensors", "demo_vit_cifar10.json", "README.md")


def quickstart_margin(weights: Path | None, out: Path) -> tuple[float, float]:
    """(wall seconds, E²VPT's test margin over linear probing) of the CPU quickstart."""
    command = [sys.executable, "-m", "e2vpt", "train", "--quickstart", "--output-dir", str(out)]
    if weights is not None:
        command += ["--weights", str(weights)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    start = time.monotonic()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    if done.returncode != 0:
        raise CampaignError(f"the quickstart failed: {done.stderr.strip().splitlines()[-1:]}")
    for line in done.stdout.splitlines():
        if "vs linear probing" in line:
            return seconds, float(line.rsplit(":", 1)[1].split()[0])
    raise CampaignError("the quickstart printed no comparison with linear probing")


def ship(folder: Path, dry_run: bool, announce: Callable[[str], None] = print) -> dict[str, Any]:
    """Replace the bundled demo weights by the campaign's, only if the CPU quickstart
    still takes < 5 minutes and E²VPT's margin over linear probing does not shrink."""
    card_path = folder / "pretrain" / "weights" / "demo_vit_cifar10.json"
    status = read_status(folder)
    if status["steps"].get("pretrain", {}).get("state") != "done" or not card_path.is_file():
        raise CampaignError(f"{folder} holds no finished pretraining; run the campaign first")
    card = json.loads(card_path.read_text())
    new_weights = folder / "pretrain" / "weights" / WEIGHT_FILES[0]
    scratch = folder / "ship"
    shutil.rmtree(scratch, ignore_errors=True)
    announce("quickstart on the bundled weights, then on the new ones (CPU, a few minutes)")
    load = os.getloadavg()[0]
    if load > 0.5:
        announce(
            f"warning: the machine is busy (load average {load:.1f}): the 5-minute check "
            "times a loaded machine; rerun `ship` on an idle one for a fair verdict"
        )
    old_s, old_margin = quickstart_margin(None, scratch / "old")
    new_s, new_margin = quickstart_margin(new_weights, scratch / "new")
    old_card = json.loads((BUNDLED / WEIGHT_FILES[1]).read_text())
    verdict = {
        "old": {
            "cifar10_test_top1": old_card["cifar10_test_top1"],
            "quickstart_s": old_s,
            "margin_over_linear": old_margin,
        },  # fmt: skip
        "new": {
            "cifar10_test_top1": card["cifar10_test_top1"],
            "quickstart_s": new_s,
            "margin_over_linear": new_margin,
        },  # fmt: skip
        "machine": describe_device("cpu"),
        "load_average_at_start": round(os.getloadavg()[0], 2),
    }
    reasons = []
    if new_s >= QUICKSTART_LIMIT_S:
        reasons.append(f"the quickstart took {new_s:.0f} s (limit {QUICKSTART_LIMIT_S:.0f})")
    if new_margin < old_margin:
        reasons.append(f"E²VPT's margin shrank from {old_margin:+.2f} to {new_margin:+.2f}")
    verdict["shipped"] = not reasons and not dry_run
    verdict["reasons"] = reasons
    publish_text(folder / "ship.json", json.dumps(verdict, indent=2) + "\n")
    for name in ("old", "new"):
        v = verdict[name]
        announce(
            f"{name}: CIFAR-10 {100 * v['cifar10_test_top1']:.2f} %, quickstart "
            f"{v['quickstart_s']:.0f} s, E²VPT − linear {v['margin_over_linear']:+.2f} points"
        )
    if reasons:
        announce("not shipped: " + "; ".join(reasons))
    elif dry_run:
        announce("would ship (--dry-run: nothing changed)")
    else:
        for name in WEIGHT_FILES:
            publish_copy(folder / "pretrain" / "weights" / name, BUNDLED / name)
        announce(f"shipped into {BUNDLED}; update README's quickstart figures (`e2vpt train`)")
    shutil.rmtree(scratch, ignore_errors=True)
    return verdict


# ---- command line ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the steps not done yet, within a time budget")
    run.add_argument("--steps", nargs="+", choices=STEP_NAMES, default=STEP_NAMES)
    run.add_argument("--skip", nargs="+", choices=STEP_NAMES, default=[])
    run.add_argument("--force", nargs="+", choices=STEP_NAMES, default=[], help="rerun these")
    run.add_argument(
        "--budget-minutes",
        type=float,
        help="for this window (default 9: one GPU command; --smoke: 30)",
    )
    run.add_argument("--smoke", action="store_true", help="every step on CPU, tiny settings")
    run.add_argument("--folder", type=Path)
    prep = sub.add_parser("prepare", help="copy the data the GPU steps read (here)")
    prep.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data")
    prep.add_argument("--folder", type=Path)
    carry = sub.add_parser("carry", help="the paths a GPU call carries for the steps left")
    carry.add_argument("--folder", type=Path)
    pk = sub.add_parser("pack", help="the results as ≤ 8 files of ≤ 15 MiB")
    pk.add_argument("--into", type=Path, required=True)
    pk.add_argument("--folder", type=Path)
    up = sub.add_parser("unpack", help="restore packed results")
    up.add_argument("parts", type=Path, nargs="+")
    up.add_argument("--folder", type=Path)
    sh = sub.add_parser("ship", help="bundle the new demo weights if they pass (here, CPU)")
    sh.add_argument("--dry-run", action="store_true", help="measure, change nothing")
    sh.add_argument("--folder", type=Path)
    st = sub.add_parser("status", help="each step's state")
    st.add_argument("--folder", type=Path)
    args = parser.parse_args(argv)
    smoke = getattr(args, "smoke", False)
    folder = (args.folder or (SMOKE_FOLDER if smoke else DEFAULT_FOLDER)).resolve()
    try:
        if args.command == "run":
            return cmd_run(args, folder, smoke)
        if args.command == "prepare":
            for path in prepare(folder, args.source):
                print(f"ready: {path}")
            return 0
        if args.command == "carry":
            return cmd_carry(folder)
        if args.command == "pack":
            pack(folder, args.into)
            return 0
        if args.command == "ship":
            ship(folder, args.dry_run)
            return 0
        if args.command == "unpack":
            unpack(args.parts, folder)
            return 0
        status = read_status(folder)
        for name in STEP_NAMES:
            e = status["steps"].get(name, {"state": "new"})
            print(f"{name:9} {e['state']:8} {e.get('note', '')}")
        return 0
    except CampaignError as err:
        print(f"gpu_campaign: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gpu_campaign: interrupted; `run` again continues", file=sys.stderr)
        return 130


def cmd_run(args: argparse.Namespace, folder: Path, smoke: bool) -> int:
    import torch

    if not smoke and not torch.cuda.is_available():
        raise CampaignError("no CUDA device here: run it on a GPU machine, or --smoke on CPU")
    device = "cpu" if smoke else "cuda"
    steps = [s for s in STEPS if s.name in args.steps and s.name not in args.skip]
    ctx = Context(folder, smoke, device)
    if smoke and not (folder / "data" / "cifar10.tar.gz").is_file():
        source = REPO.parent / "shared" / "data"
        if "pretrain" in [s.name for s in steps] and (source / "cifar10.tar.gz").is_file():
            publish_copy(source / "cifar10.tar.gz", folder / "data" / "cifar10.tar.gz")
    minutes = args.budget_minutes or (30.0 if smoke else 9.0)
    status = run_campaign(ctx, steps, minutes * 60, SMOKE_BUDGETS if smoke else BUDGETS, args.force)
    print(f"\nsummary: {folder / SUMMARY_FILE}")
    failed = [n for n, e in status["steps"].items() if e["state"] == "failed"]
    return 1 if failed else 0


def cmd_carry(folder: Path) -> int:
    if not folder.is_relative_to(REPO):
        raise CampaignError(
            f"{folder} is outside the repository: only paths inside it travel to a GPU "
            "machine; use a --folder inside it (the default is campaign/)"
        )
    paths = carry_paths(folder, read_status(folder))
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    tree = sum(
        (REPO / p.decode()).stat().st_size for p in tracked if p and (REPO / p.decode()).is_file()
    )
    total = tree + sum(tree_bytes(REPO / p) for p in paths)
    print(json.dumps(paths))
    print(
        f"{total / 2**20:.1f} MiB with the working tree (limit {CARRY_BYTES / 2**20:.0f})",
        file=sys.stderr,
    )
    if len(paths) > CARRY_PATHS or total > CARRY_BYTES:
        raise CampaignError(
            f"{len(paths)} paths / {total / 2**20:.1f} MiB exceed what one GPU call carries "
            f"({CARRY_PATHS} paths, {CARRY_BYTES / 2**20:.0f} MiB); run fewer steps per window"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
