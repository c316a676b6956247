"""``e2vpt train``: one method on one task; with no arguments, the offline quickstart."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from e2vpt.cli.run_config import add_train_flags, config_from_args, resumed_config

NAME = "train"
HELP = "train a method on a task (no arguments: the offline quickstart)"
INTERRUPTED = "Every file written so far is whole; the run folder is marked unfinished."
# the trainer's own message (which epoch is saved, the command that resumes) wins
INTERRUPT_SAYS_MORE = True
# the linear-probing baseline's lr grid: the method's default base lr times these
LINEAR_PROBE_LR_FACTORS = (0.25, 1.0, 4.0)


def add_parser(sub: Any) -> None:
    from e2vpt.backbones import DEMO_BACKBONE

    parser = sub.add_parser(
        NAME,
        help=HELP,
        description="Train one method on one task. With no arguments: E²VPT on the bundled "
        f"demo backbone ({DEMO_BACKBONE}) and the built-in task, compared with linear probing.",
    )
    parser.add_argument(
        "--quickstart",
        action="store_true",
        help="the offline demo run (the default when no argument is given)",
    )
    folder = parser.add_mutually_exclusive_group()
    folder.add_argument(
        "--resume",
        action="store_true",
        help="continue the unfinished run in --output-dir from its last saved epoch (its "
        "settings are read from the folder; only runtime flags such as --device may be given)",
    )
    folder.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --output-dir (its files are deleted first)",
    )
    add_train_flags(parser, skip={"method_config"})
    parser.set_defaults(run_command=run)


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.resume:
        cfg = resumed_config(args)
        existing = "resume"
    else:
        cfg = config_from_args(args, argv)
        existing = "overwrite" if args.overwrite else "refuse"
    if int(os.environ.get("RANK", "0")) > 0:  # torchrun: rank 0 alone reports
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return _train_and_report(cfg, existing)
    return _train_and_report(cfg, existing)


def _train_and_report(cfg: Any, existing: str) -> int:
    from e2vpt.runs import (
        ADAPTER_CONFIG_FILE,
        ADAPTER_TENSORS_FILE,
        METRICS_CSV_FILE,
        RESULTS_FILE,
    )
    from e2vpt.training.trainer import (
        linear_probe_search,
        load_task_for,
        preflight,
        results_table,
        train,
    )

    method_cfg = preflight(cfg, existing=existing).method
    print(
        f"e2vpt train: {method_cfg.method_name} on {cfg.data} with backbone {cfg.backbone}"
        f" → {cfg.output_dir}",
        file=sys.stderr,
    )
    compare = cfg.compare_linear and method_cfg.method_name != "linear"
    task = load_task_for(cfg) if compare else None  # decoded once for both runs
    results = [train(cfg, task=task, existing=existing)]
    if compare:
        linear_cfg = dataclasses.replace(cfg, output_dir=str(Path(cfg.output_dir) / "linear"))
        default = dataclasses.replace(linear_cfg, method="linear", method_config={}, base_lr=None)
        grid = [default.resolve().base_lr * f for f in LINEAR_PROBE_LR_FACTORS]
        print(
            f"linear probing baseline: base_lr grid {grid}, best on {cfg.val_split}",
            file=sys.stderr,
        )
        probes = "continue" if existing == "resume" else "refuse"
        results.append(linear_probe_search(linear_cfg, grid, task=task, existing=probes))
    print()
    print(results_table(results))
    if len(results) == 2 and results[0].eval_top1 is not None and results[1].eval_top1 is not None:
        gap = 100 * (results[0].eval_top1 - results[1].eval_top1)
        print(f"\n{results[0].method} vs linear probing on {cfg.eval_split}: {gap:+.2f} points")
    kept = (ADAPTER_TENSORS_FILE, ADAPTER_CONFIG_FILE, METRICS_CSV_FILE, RESULTS_FILE)
    print(f"\nrun folder: {cfg.output_dir} ({', '.join(kept)})")
    return 0
