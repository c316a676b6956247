"""``e2vpt prune``: E²VPT token/segment pruning and rewinding of a trained run; the
pruning flags ``sweep --prune`` shares."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from e2vpt.cli.flags import settings_from_args

NAME = "prune"
HELP = "E²VPT token/segment pruning + rewinding of a trained e2vpt run"
INTERRUPTED = (
    "Finished grid points are kept and the interrupted one resumes from its last "
    "saved epoch; rerun the same command to go on."
)
INTERRUPT_SAYS_MORE = False


def add_pruning_flags(parser: argparse.ArgumentParser, prefix: str) -> None:
    """The pruning grid, score and mode (``e2vpt prune``: no prefix; ``sweep``: prune-)."""
    from e2vpt.layers.settings import PRUNE_MODES
    from e2vpt.pruning.settings import SCORE_DEFINITIONS, SCORE_MODES
    from e2vpt.recipes import PRUNE_CHOICES

    tokens, segments = PRUNE_CHOICES["token_fractions"], PRUNE_CHOICES["segment_fractions"]
    parser.add_argument(
        f"--{prefix}token-fractions",
        type=float,
        nargs="+",
        help=f"fractions of visual tokens to prune (default recipe: {_listed(tokens.default)}; "
        f"official: {_listed(tokens.official)})",
    )
    parser.add_argument(
        f"--{prefix}segment-fractions",
        type=float,
        nargs="+",
        help="fractions of each kept token's segments to prune (default recipe: "
        f"{_listed(segments.default)}; official: {_listed(segments.official)})",
    )
    parser.add_argument(
        f"--{prefix}score",
        choices=SCORE_MODES,
        help="token/segment importance, lowest pruned first: "
        + "; ".join(f"{k}: {v}" for k, v in SCORE_DEFINITIONS.items()).replace("%", "%%")
        + _recipes_say("score"),
    )
    parser.add_argument(
        "--prune-mode",
        choices=PRUNE_MODES,
        help="remove: pruned tokens leave every layer's sequence (fewer tokens, faster); "
        "zero: they stay as zero vectors, as the official code" + _recipes_say("prune_mode"),
    )


def _recipes_say(name: str) -> str:
    from e2vpt.recipes import PRUNE_CHOICES

    choice = PRUNE_CHOICES[name]
    return f" (default recipe: {choice.default}; official: {choice.official})"


def _listed(values: list[float]) -> str:
    return " ".join(f"{v:g}" for v in values)


def add_parser(sub: Any) -> None:
    from e2vpt.recipes import RECIPES

    parser = sub.add_parser(
        NAME,
        help=HELP,
        description="Score every visual token and segment by the gradient of the training "
        "loss w.r.t. its mask, then for each (token fraction × segment fraction) of the grid "
        "prune, rewind the survivors to their initial values and retrain with the run's own "
        "hyper-parameters; the best on val (ties → more pruning) becomes the final pruned "
        "checkpoint. Killed mid-grid, the same command resumes.",
    )
    parser.add_argument(
        "--from", dest="run_dir", type=Path, required=True, help="run folder of an e2vpt run"
    )
    add_pruning_flags(parser, "")
    parser.add_argument(
        "--recipe",
        choices=RECIPES,
        help="default: the run's own (a run is pruned with the recipe it was trained with)",
    )
    parser.add_argument(
        "--output-dir", help="report + final pruned checkpoint (default: RUN_DIR/pruned)"
    )
    parser.add_argument(
        "--epochs", type=int, help="retraining epochs per grid point (default: the run's own)"
    )
    parser.add_argument("--device", help="default: the run's own")
    parser.add_argument(
        "--weights", help="the backbone's weights file (default: the path the run stored)"
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bars"
    )
    parser.set_defaults(run_command=run)


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from e2vpt.pruning.search import prune_run
    from e2vpt.pruning.settings import PruneSettings
    from e2vpt.runs import ADAPTER_TENSORS_FILE, PRUNING_CURVE_FILE, PRUNING_REPORT_NAME

    settings = settings_from_args(PruneSettings, args)
    report = prune_run(args.run_dir, settings)
    print()
    print(report.table())
    chosen = report.selected["plan"]
    print(
        f"\nselected on val: prune {chosen['token_fraction']:g} of tokens, "
        f"{chosen['segment_fraction']:g} of segments → {report.selected['tokens_kept']} tokens, "
        f"{report.selected['prompt_values']:,} prompt values"
    )
    print(
        f"pruned checkpoint + report: {report.output_dir} ({ADAPTER_TENSORS_FILE}, "
        f"{PRUNING_REPORT_NAME}.{{md,csv,json}}, {PRUNING_CURVE_FILE})"
    )
    return 0
