"""``e2vpt eval``: a trained run folder's top-1 on a dataset (its own by default)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from e2vpt.cli.flags import add_dataclass_flags, settings_from_args

NAME = "eval"
HELP = "evaluate a trained run folder"
INTERRUPTED = "Nothing was written."
INTERRUPT_SAYS_MORE = False


def add_parser(sub: Any) -> None:
    from e2vpt.evaluation import EvalSettings

    parser = sub.add_parser(NAME, help=HELP, description=HELP.capitalize() + ".")
    parser.add_argument("run_dir", type=Path, help="the run folder to evaluate")
    add_dataclass_flags(parser, EvalSettings, suppress_defaults=False)
    parser.set_defaults(run_command=run)


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from e2vpt.evaluation import EvalSettings, evaluate, write_eval_result
    from e2vpt.reporting import format_table

    result = evaluate(args.run_dir, settings_from_args(EvalSettings, args))
    print(format_table([result.table_row()]))
    print(f"\nwritten: {write_eval_result(result)}")
    return 0
