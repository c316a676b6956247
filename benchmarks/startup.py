"""How fast the command line answers before it does any work: ``--help``, a command's
``--help`` and a mistyped flag, against ``import e2vpt`` and ``import torch`` for
reference. Every row is the median wall time of fresh processes (nothing cached in the
interpreter), run through the installed ``e2vpt`` entry point next to this interpreter,
not through a launcher that adds its own start-up.

    uv run python benchmarks/startup.py            # 5 runs per row
    uv run python benchmarks/startup.py --runs 9
    uv run python benchmarks/startup.py --suite    # also the whole test suite, once

Writes benchmarks/results/startup.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from e2vpt.errors import ConfigError, exit_code_of
from e2vpt.files import atomic_write_text
from e2vpt.reporting import format_table

RESULTS = Path(__file__).resolve().parent / "results"


def entry_point() -> str:
    """The ``e2vpt`` script installed beside this interpreter (``.venv/bin/e2vpt``)."""
    script = Path(sys.executable).with_name("e2vpt")
    if not script.is_file():
        raise ConfigError(f"no e2vpt entry point at {script}; install the package first")
    return str(script)


def rows_to_time() -> list[tuple[str, list[str]]]:
    e2vpt = entry_point()
    python = sys.executable
    return [
        ("e2vpt --help", [e2vpt, "--help"]),
        ("e2vpt train --help", [e2vpt, "train", "--help"]),
        ("e2vpt train --epoch 1 (flag error)", [e2vpt, "train", "--epoch", "1"]),
        ("e2vpt info --help", [e2vpt, "info", "--help"]),
        ('python -c "import e2vpt"', [python, "-c", "import e2vpt"]),
        ('python -c "import torch" (reference)', [python, "-c", "import torch"]),
    ]


def wall_times(argv: list[str], runs: int) -> list[float]:
    """Seconds per fresh process; the exit code is not checked (a flag error exits 2)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return times


def _suite_row() -> dict[str, object]:
    """The whole test suite once (pytest in a fresh process, from the repository)."""
    repo = Path(__file__).resolve().parents[1]
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=repo, check=False
    )
    seconds = round(time.perf_counter() - start, 1)
    label = "pytest (whole suite, once)" + ("" if done.returncode == 0 else " FAILED")
    return {"command": label, "median_s": seconds, "min_s": seconds, "max_s": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per row")
    parser.add_argument(
        "--suite", action="store_true", help="also time the whole test suite (one run)"
    )
    args = parser.parse_args()
    if args.runs < 1:
        raise ConfigError(f"--runs must be >= 1, got {args.runs}")
    rows = []
    for label, argv in rows_to_time():
        times = wall_times(argv, args.runs)
        rows.append(
            {
                "command": label,
                "median_s": round(statistics.median(times), 3),
                "min_s": round(min(times), 3),
                "max_s": round(max(times), 3),
            }
        )
    if args.suite:
        rows.append(_suite_row())
    where = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    table = format_table(rows, float_digits=3)
    print(f"{where}, median of {args.runs} fresh processes\n\n{table}")
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / "startup"
    atomic_write_text(
        stem.with_suffix(".json"),
        json.dumps({"machine": where, "runs": args.runs, "rows": rows}, indent=2) + "\n",
    )
    atomic_write_text(
        stem.with_suffix(".md"), f"{where}, median of {args.runs} fresh processes\n\n{table}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(exit_code_of(main, "startup.py"))
