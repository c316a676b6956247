"""``e2vpt report``: every sweep under a folder as one table (Markdown, CSV, JSON, plot)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

NAME = "report"
HELP = "tabulate every sweep under a folder (Markdown + CSV + JSON + plot)"
INTERRUPTED = "Rerun the command to write the report."
INTERRUPT_SAYS_MORE = False


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        NAME,
        help=HELP,
        description="Per-task mean ± std, VTAB group means, the mean of group means, the task "
        "mean, FGVC mean, CIFAR-100-LT error, tunable parameters; plus accuracy vs tunable "
        "parameters as a PNG.",
    )
    parser.add_argument("runs_dir", type=Path, help="the --output-dir of `e2vpt sweep`")
    parser.add_argument("--output-dir", type=Path, help="default: RUNS_DIR")
    parser.add_argument("--name", default="report", help="file stem (default: %(default)s)")
    parser.add_argument(
        "--anchors",
        action="store_true",
        help="add the papers' published numbers (ViT-B/16) as rows",
    )
    parser.add_argument(
        "--include-running",
        action="store_true",
        help="also sweeps not finished yet (their seeds so far)",
    )
    parser.set_defaults(run_command=run)


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from e2vpt.errors import SweepError
    from e2vpt.sweeps.report import build_report, write_report

    report = build_report(args.runs_dir, anchors=args.anchors, include_running=args.include_running)
    if not report.entries:
        raise SweepError(
            f"no finished sweep (sweep.json) under {args.runs_dir}; run `e2vpt sweep "
            f"--output-dir {args.runs_dir} ...` first"
        )
    paths = write_report(report, args.output_dir or args.runs_dir, name=args.name)
    print(report.markdown())
    print(f"\nwritten: {', '.join(str(p) for p in paths)}")
    return 0
