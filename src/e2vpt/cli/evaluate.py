"""``e2vpt eval``: a trained run folder's top-1 on a dataset (its own by default)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from e2vpt.cli.shared_flags import DEVICE_HELP, add_weights_flag

NAME = "eval"
HELP = "evaluate a trained run folder"
INTERRUPTED = "Nothing was written."
INTERRUPT_SAYS_MORE = False


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(NAME, help=HELP, description=HELP.capitalize() + ".")
    parser.add_argument("run_dir", type=Path, help="the run folder to evaluate")
    parser.add_argument("--data", help="task to evaluate on (default: the run's own)")
    parser.add_argument("--split", default="test", help="the task split to score (default: test)")
    parser.add_argument(
        "--batch-size", type=int, default=256, help="images per forward (default: 256)"
    )
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_weights_flag(parser)
    parser.add_argument(
        "--precision",
        default="auto",
        help="auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 (default: auto)",
    )
    parser.add_argument(
        "--ignore-class-names",
        action="store_true",
        help="score even when the data's class names differ from the run's (labels are "
        "then taken to mean the same classes by position)",
    )
    parser.set_defaults(run_command=run)


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from e2vpt.evaluation import evaluate, write_eval_result
    from e2vpt.reporting import format_table

    result = evaluate(
        args.run_dir,
        data=args.data,
        split=args.split,
        batch_size=args.batch_size,
        device=args.device,
        weights=args.weights,
        precision=args.precision,
        ignore_class_names=args.ignore_class_names,
    )
    print(format_table([result.table_row()]))
    print(f"\nwritten: {write_eval_result(result)}")
    return 0
