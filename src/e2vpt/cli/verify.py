"""``e2vpt verify``: check a run folder's files, and record the tensor-file hash an
older run lacks (``--add-hash``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

NAME = "verify"
HELP = "check run folders' files (--add-hash: record the tensor hash an older run lacks)"
INTERRUPTED = "adapter.json is rewritten whole or not at all: nothing is half-written."
INTERRUPT_SAYS_MORE = False


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        NAME,
        help=HELP,
        description="Check each run folder without loading a model: adapter.json field by "
        "field (types and limits), train_config.yaml and results.json, and that "
        "adapter.safetensors holds the tensors adapter.json records and matches its "
        "SHA-256. Exit code 0: every run verified; 1: some run records no hash (an older "
        "run) and so cannot be verified; 2: a file is invalid.",
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, help="the run folders to check")
    parser.add_argument(
        "--add-hash",
        action="store_true",
        help="a run without a recorded hash gets the SHA-256 of its adapter.safetensors "
        "as it is now (adapter.json rewritten atomically); use it on folders you trust",
    )
    parser.set_defaults(run_command=run)


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from e2vpt.runs.integrity import verify_run

    unverified = 0
    for run_dir in args.run_dirs:
        result = verify_run(run_dir, add_hash=args.add_hash)
        hint = "" if result.verified else "; --add-hash records the hash of the file as it is"
        print(result.message + hint)
        unverified += not result.verified
    return 1 if unverified else 0
