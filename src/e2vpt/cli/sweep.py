"""``e2vpt sweep``: the papers' protocol for one task × method (lr × wd grid on val, then
the final seeds on test)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from e2vpt.cli.flags import settings_from_args
from e2vpt.cli.prune import add_pruning_flags
from e2vpt.cli.run_config import add_train_flags, config_from_args

NAME = "sweep"
HELP = "the papers' protocol for one task × method: lr × wd grid, then final seeds"
INTERRUPTED = (
    "Finished trials are kept and the interrupted one resumes from its last saved "
    "epoch; rerun the same command to go on."
)
INTERRUPT_SAYS_MORE = False
# TrainConfig fields a sweep sets per trial: not flags of `e2vpt sweep`
SWEEP_OWNED = {
    "output_dir",
    "base_lr",
    "weight_decay",
    "seed",
    "train_split",
    "val_split",
    "eval_split",
    "compare_linear",
}
SWEEP_FLAGS = {
    "base_lrs",
    "weight_decays",
    "seeds",
    "output_dir",
    "devices",
    "task_name",
    "group",
    "prune",
    "prune_token_fractions",
    "prune_segment_fractions",
    "prune_score",
    "prune_mode",
    "engine",
    "address",
    "cpus_per_trial",
    "gpus_per_trial",
    "max_concurrent_trials",
    "asha",
    "asha_grace_period",
    "asha_reduction_factor",
}


def add_parser(sub: Any) -> None:
    from e2vpt.sweeps.settings import ADAMW_BASE_LRS, SweepSettings

    parser = sub.add_parser(
        NAME,
        help=HELP,
        description="Grid of base lr × weight decay trained on train and scored on val at the "
        "last epoch; the best (ties → smaller lr) is retrained on train+val with each seed and "
        "scored on test (mean ± std). Resumable: rerun the same command after a kill. Results: "
        "OUTPUT_DIR/<task>/<method>/sweep.{json,md}; `e2vpt report OUTPUT_DIR` tabulates them.",
    )
    sweep_defaults = SweepSettings()
    parser.add_argument(
        "--base-lrs",
        type=float,
        nargs="+",
        help="base lr grid (default: the papers' {50 … 0.05} for SGD, "
        f"{ADAMW_BASE_LRS} for AdamW / full)",
    )
    parser.add_argument(
        "--weight-decays", type=float, nargs="+", help="default: the papers' {0.01, 1e-3, 1e-4, 0}"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=sweep_defaults.seeds, help="default: %(default)s"
    )
    parser.add_argument(
        "--output-dir", default=sweep_defaults.output_dir, help="default: %(default)s"
    )
    parser.add_argument(
        "--devices",
        nargs="+",
        help="run trials in parallel, one worker process per device (e.g. cuda:0 cuda:1)",
    )
    parser.add_argument("--task-name", help="name in folders and reports (default: the task's)")
    parser.add_argument(
        "--group", help="report group (default: the task's: VTAB group, fgvc, cifar100-lt)"
    )
    parser.add_argument(
        "--prune",
        action="store_true",
        help="e2vpt: also prune (fractions chosen on val) and report the pruned model",
    )
    add_pruning_flags(parser, "prune-")
    _add_ray_flags(parser, sweep_defaults.engine)
    add_train_flags(parser, skip={"method_config", *SWEEP_OWNED})
    parser.set_defaults(run_command=run)


def _add_ray_flags(parser: argparse.ArgumentParser, default_engine: str) -> None:
    """The engine choice and the Ray engine's settings (:class:`RaySettings`)."""
    from e2vpt.sweeps.settings import RaySettings

    ray_defaults = RaySettings()
    ray = parser.add_argument_group("Ray engine (pip install 'e2vpt[ray]')")
    ray.add_argument(
        "--engine",
        choices=("local", "ray"),
        default=default_engine,
        help="local: this process (or --devices workers); ray: Ray Tune trials on a cluster",
    )
    ray.add_argument(
        "--address", help="Ray cluster address (e.g. auto or ray://head:10001); default: local"
    )
    ray.add_argument(
        "--cpus-per-trial",
        type=float,
        default=ray_defaults.cpus_per_trial,
        help=f"CPUs Ray reserves per trial (default: {ray_defaults.cpus_per_trial})",
    )
    ray.add_argument(
        "--gpus-per-trial", type=float, help="default: 1 where the cluster has GPUs, else 0"
    )
    ray.add_argument("--max-concurrent-trials", type=int, help="default: what resources allow")
    ray.add_argument(
        "--asha", action="store_true", help="stop weak grid trials early (ASHA on val top-1)"
    )
    ray.add_argument(
        "--asha-grace-period",
        type=int,
        default=ray_defaults.asha_grace_period,
        help="epochs before a trial can be stopped (default: %(default)s)",
    )
    ray.add_argument(
        "--asha-reduction-factor",
        type=float,
        default=ray_defaults.asha_reduction_factor,
        help="keep the best 1/factor at every rung (default: %(default)s)",
    )


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from e2vpt.sweeps.protocol import run_sweep, sweep_markdown
    from e2vpt.sweeps.settings import RaySettings, SweepSettings

    cfg = config_from_args(args, argv, exclude=frozenset(SWEEP_FLAGS))
    settings = settings_from_args(
        SweepSettings, args, progress=cfg.progress, ray=settings_from_args(RaySettings, args)
    )
    cfg.validate()
    settings.validate(cfg)  # a wrong setting is said before the banner
    print(
        f"e2vpt sweep: {cfg.method} on {cfg.data} with backbone {cfg.backbone} → "
        f"{settings.output_dir}",
        file=sys.stderr,
    )
    summary = run_sweep(cfg, settings)
    print()
    print(sweep_markdown(summary))
    return 0
