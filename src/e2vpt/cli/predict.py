"""``e2vpt predict``: the top-k classes of image files with a trained run folder."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from e2vpt.cli.flags import add_dataclass_flags, settings_from_args
from e2vpt.predict_settings import PredictSettings

NAME = "predict"
HELP = "classify images with a trained run folder"
INTERRUPTED = "The output file was not written (an existing one is untouched)."
INTERRUPT_SAYS_MORE = False
PREDICTION_FORMATS = (".csv", ".jsonl")


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        NAME,
        help=HELP,
        description="Top-k classes of each image, decoded and resized as the run's "
        "evaluation saw them. Unreadable images are reported and skipped (exit code 1).",
    )
    parser.add_argument("run_dir", type=Path, help="the run folder to predict with")
    parser.add_argument(
        "inputs", nargs="+", help="image files, folders (searched at any depth), globs"
    )
    parser.add_argument(
        "--output", type=Path, help="write the predictions to a .csv or .jsonl file"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    add_dataclass_flags(parser, PredictSettings, suppress_defaults=False)
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a progress bar on stderr (default: on)",
    )
    parser.set_defaults(run_command=run)


def _check_output(output: Path | None, overwrite: bool) -> None:
    from e2vpt.errors import ConfigError
    from e2vpt.files import check_writable

    if output is None:
        return
    if output.suffix not in PREDICTION_FORMATS:
        raise ConfigError(
            f"--output {output}: name a .csv or .jsonl file (the suffix picks the format)"
        )
    if output.exists() and not overwrite:
        raise ConfigError(f"{output} exists; pass --overwrite to replace it, or another --output")
    check_writable(output.parent, flag="--output")


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from tqdm.auto import tqdm

    from e2vpt.files import atomic_write_text
    from e2vpt.predict import Failure, Prediction, Predictor, find_images, throughput

    output: Path | None = args.output
    _check_output(output, args.overwrite)
    settings = settings_from_args(PredictSettings, args)
    settings.validate()  # before the images are searched
    paths = find_images(args.inputs)
    predictor = Predictor(args.run_dir, settings)
    start = time.perf_counter()
    rows: list[Prediction] = []
    failed: list[Failure] = []
    for item in predictor.predict_files(paths, progress=args.progress):
        if isinstance(item, Failure):
            failed.append(item)
            tqdm.write(f"skipped {item.path}: {item.reason}", file=sys.stderr)
        else:
            rows.append(item)
    elapsed = time.perf_counter() - start
    if output is not None:
        atomic_write_text(output, predictions_text(rows, output.suffix))
    else:
        print(_table(rows))
    print(f"\npredicted {throughput(len(rows), elapsed)}", file=sys.stderr)
    if output is not None:
        print(f"written: {output}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} image(s) could not be read and were skipped", file=sys.stderr)
        return 1
    return 0


def _table(rows: list[Any]) -> str:
    from e2vpt.reporting import format_table

    return format_table(
        [
            {"image": r.path, "class": r.classes[0], "p": round(r.probabilities[0], 4)}
            | ({"next": ", ".join(r.classes[1:3])} if len(r.classes) > 1 else {})
            for r in rows
        ]
    )


def predictions_text(rows: list[Any], suffix: str) -> str:
    """The rows as JSON lines, or CSV with one column pair per rank."""
    if suffix == ".jsonl":
        return "".join(json.dumps(r.to_dict()) + "\n" for r in rows)
    buffer = io.StringIO()
    k = max((len(r.classes) for r in rows), default=0)
    writer = csv.writer(buffer)
    writer.writerow(["path", *[f"{kind}_{i + 1}" for i in range(k) for kind in ("class", "p")]])
    for r in rows:
        pairs = [
            v for c, p in zip(r.classes, r.probabilities, strict=True) for v in (c, f"{p:.6f}")
        ]
        writer.writerow([r.path, *pairs])
    return buffer.getvalue()
