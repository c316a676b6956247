"""Wall time of the scale-out paths on one machine: one training run in one process vs.
torchrun data-parallel (gloo on CPU, NCCL on GPUs), and a sweep grid in-process vs. on
a local Ray instance. Prints a Markdown table and writes benchmarks/results/scale_out.json.

    uv run python benchmarks/scale_out.py [--procs 2] [--epochs 3]

Small on purpose (the demo backbone, built-in `position` task): it measures the engines'
overheads and speed-ups, not accuracy."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from e2vpt.reporting import format_table

RESULTS = Path(__file__).resolve().parent / "results"


def timed(command: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--procs", type=int, default=2, help="torchrun processes")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="e2vpt-scale-out-"))
    e2vpt = [sys.executable, "-m", "e2vpt"]
    job = ["--method", "e2vpt", "--data", "builtin:position", "--epochs", str(args.epochs)]
    job += ["--batch-size", "64", "--no-progress", "--device", args.device]
    grid = ["--base-lrs", "0.05", "0.5", "--weight-decays", "0", "0.001", "--seeds", "42"]
    threads = str(max(1, (os.cpu_count() or 2) // args.procs))
    rows = []
    try:
        single = timed([*e2vpt, "train", *job, "--output-dir", str(work / "one")])
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        torchrun += [f"--nproc_per_node={args.procs}", "-m", "e2vpt", "train", *job]
        env = {**os.environ, "OMP_NUM_THREADS": threads}
        ddp = timed([*torchrun, "--output-dir", str(work / "ddp")], env)
        rows += [
            {"job": "train (1 run)", "engine": "1 process", "wall s": single},
            {"job": "train (1 run)", "engine": f"torchrun × {args.procs}", "wall s": ddp},
        ]
        sweep = [*e2vpt, "sweep", *job, *grid]
        local = timed([*sweep, "--output-dir", str(work / "local")])
        ray = timed([*sweep, "--engine", "ray", "--output-dir", str(work / "ray")])
        rows += [
            {"job": "sweep (4 grid + 1 seed)", "engine": "in-process", "wall s": local},
            {"job": "sweep (4 grid + 1 seed)", "engine": "Ray (local)", "wall s": ray},
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(format_table(rows, float_digits=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale_out.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
