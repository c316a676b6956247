"""``e2vpt train | eval | prune | sweep | report | info``. Every flag maps to one config
field: top-level flags to :class:`TrainConfig`, method flags (``--visual-tokens`` …) to the
method's config."""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import inspect
import io
import json
import os
import re
import signal
import sys
import time
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from e2vpt import __version__
from e2vpt.backbones import DEMO_BACKBONE, canonical_name, check_weights_file, create_backbone
from e2vpt.checkpoint import CheckpointError, load, read_config
from e2vpt.data import BUILTIN_PREFIX, load_task
from e2vpt.errors import E2VPTError, Interrupted
from e2vpt.files import atomic_write_text, check_writable
from e2vpt.layers.prompts import PRUNE_MODES
from e2vpt.methods.base import (
    _REGISTRY,
    ConfigError,
    MethodConfig,
    get_method,
    list_methods,
    method_config,
)
from e2vpt.pruning.importance import SCORE_DEFINITIONS, SCORE_MODES
from e2vpt.pruning.search import PruneSettings
from e2vpt.recipes import PRUNE_CHOICES, RECIPES, choices_table
from e2vpt.reporting import format_table, write_json
from e2vpt.runs import (
    TRAIN_CONFIG_FILE,
    eval_result_file,
    fresh_folder,
    has_train_config,
    read_train_config,
    readable_name,
    require_complete,
    resumed_settings,
)
from e2vpt.sweeps.protocol import ADAMW_BASE_LRS, SweepError, SweepSettings
from e2vpt.sweeps.ray_engine import RaySettings
from e2vpt.training.config import QUICKSTART, TrainConfig, absolute_data_spec
from e2vpt.wrapping import wrap

# every error a user can fix derives from E2VPTError (see e2vpt.errors)
USER_ERRORS = (E2VPTError,)


# what an interrupted command leaves behind, and how to go on
INTERRUPTED = {
    "train": "Every file written so far is whole; the run folder is marked unfinished.",
    "sweep": "Finished trials are kept and the interrupted one resumes from its last saved "
    "epoch; rerun the same command to go on.",
    "prune": "Finished grid points are kept and the interrupted one resumes from its last "
    "saved epoch; rerun the same command to go on.",
    "eval": "Nothing was written.",
    "predict": "The output file was not written (an existing one is untouched).",
    "export": "The output file was not written (an existing one is untouched).",
    "serve": "The server stopped after the requests in flight.",
    "report": "Rerun the command to write the report.",
    "info": "Nothing was written.",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(annotation: Any) -> Any:
    """int | None → int; dict[...] → dict."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    return origin or annotation


DEVICE_HELP = "auto | cpu | cuda | cuda:N (default: auto)"  # predict, serve, eval


def field_comments(cls: type) -> dict[str, str]:
    """The trailing ``# comment`` of each field in a config dataclass: its --help text."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for match in re.finditer(r"^\s+(\w+): [^=\n]+=[^#\n]*#\s*(.+)$", source, re.MULTILINE):
            comments[match.group(1)] = match.group(2).strip()
    return comments


def _add_dataclass_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    skip: set[str],
    help_prefix: str = "",
    help_overrides: dict[str, str] | None = None,
) -> None:
    """One flag per field; ``help_overrides`` for help computed at run time (registries)."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls) | (help_overrides or {})
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        described = comments.get(f.name, f.name).replace("%", "%%")
        text = f"{help_prefix}{described} (default: {default})"
        if "parse" in f.metadata:  # a field read from a file (e.g. a peft config)
            parser.add_argument(
                _flag(f.name),
                dest=f.name,
                type=f.metadata["parse"],
                metavar=f.metadata.get("metavar"),
                default=argparse.SUPPRESS,
                help=f"{help_prefix}{described}",
            )
            continue
        kind = _base_type(hints[f.name])
        if kind is bool:
            parser.add_argument(
                _flag(f.name),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=text,
            )
        else:
            parser.add_argument(
                _flag(f.name), dest=f.name, type=kind, default=argparse.SUPPRESS, help=text
            )


def method_option_owners() -> dict[str, list[str]]:
    """Method option name → the method names that have it."""
    owners: dict[str, list[str]] = {}
    for spec in _REGISTRY.values():
        fixed = {k for k, _ in spec.fixed}
        for f in dataclasses.fields(spec.config_cls):
            if f.name not in fixed:
                owners.setdefault(f.name, []).append(spec.name)
    return owners


def _method_config_classes() -> list[type[MethodConfig]]:
    seen: list[type[MethodConfig]] = []
    for spec in _REGISTRY.values():
        if spec.config_cls not in seen:
            seen.append(spec.config_cls)
    return seen


# parsed arguments that choose what to do, not config fields
NOT_CONFIG_FLAGS = frozenset({"command", "config", "quickstart", "resume", "overwrite"})

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


def _add_train_flags(parser: argparse.ArgumentParser, skip: set[str]) -> None:
    _add_dataclass_flags(
        parser, TrainConfig, skip=skip, help_overrides={"method": " | ".join(list_methods())}
    )
    _add_method_flags(parser)


def _add_method_flags(
    parser: argparse.ArgumentParser, skip: frozenset[str] | set[str] = frozenset()
) -> None:
    """One flag per method option (an option several methods share: one flag)."""
    group = parser.add_argument_group("method options (see `e2vpt info`)")
    added: set[str] = set(skip)
    for cls in _method_config_classes():
        fields = {f.name for f in dataclasses.fields(cls)} - added - {"deep"}
        _add_dataclass_flags(
            group,
            cls,
            skip={f.name for f in dataclasses.fields(cls)} - fields,
            help_prefix=f"[{cls.name}] ",
        )
        added |= fields


def _add_pruning_flags(parser: argparse.ArgumentParser, prefix: str) -> None:
    """The pruning grid, score and mode (``e2vpt prune``: no prefix; ``sweep``: prune-)."""
    default, official = (
        PRUNE_CHOICES["token_fractions"].default,
        PRUNE_CHOICES["token_fractions"].official,
    )
    parser.add_argument(
        f"--{prefix}token-fractions",
        type=float,
        nargs="+",
        help=f"fractions of visual tokens to prune (default recipe: {_listed(default)}; "
        f"official: {_listed(official)})",
    )
    default, official = (
        PRUNE_CHOICES["segment_fractions"].default,
        PRUNE_CHOICES["segment_fractions"].official,
    )
    parser.add_argument(
        f"--{prefix}segment-fractions",
        type=float,
        nargs="+",
        help="fractions of each kept token's segments to prune (default recipe: "
        f"{_listed(default)}; official: {_listed(official)})",
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
    choice = PRUNE_CHOICES[name]
    return f" (default recipe: {choice.default}; official: {choice.official})"


def _listed(values: list[float]) -> str:
    return " ".join(f"{v:g}" for v in values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="e2vpt",
        description="Prompt tuning (VPT, E²VPT) for pretrained vision transformers.",
    )
    parser.add_argument("--version", action="version", version=f"e2vpt {__version__}")
    sub = parser.add_subparsers(dest="command")

    train = sub.add_parser(
        "train",
        help="train a method on a task (no arguments: the offline quickstart)",
        description="Train one method on one task. With no arguments: E²VPT on the bundled "
        f"demo backbone ({DEMO_BACKBONE}) and the built-in task, compared with linear probing.",
    )
    train.add_argument("--config", type=Path, help="YAML file of config fields (flags override it)")
    train.add_argument(
        "--quickstart",
        action="store_true",
        help="the offline demo run (the default when no argument is given)",
    )
    folder = train.add_mutually_exclusive_group()
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
    _add_train_flags(train, skip={"method_config"})

    sweep = sub.add_parser(
        "sweep",
        help="the papers' protocol for one task × method: lr × wd grid, then final seeds",
        description="Grid of base lr × weight decay trained on train and scored on val at the "
        "last epoch; the best (ties → smaller lr) is retrained on train+val with each seed and "
        "scored on test (mean ± std). Resumable: rerun the same command after a kill. Results: "
        "OUTPUT_DIR/<task>/<method>/sweep.{json,md}; `e2vpt report OUTPUT_DIR` tabulates them.",
    )
    sweep.add_argument("--config", type=Path, help="YAML file of config fields (flags override it)")
    sweep_defaults = SweepSettings()
    sweep.add_argument(
        "--base-lrs",
        type=float,
        nargs="+",
        help="base lr grid (default: the papers' {50 … 0.05} for SGD, "
        f"{ADAMW_BASE_LRS} for AdamW / full)",
    )
    sweep.add_argument(
        "--weight-decays", type=float, nargs="+", help="default: the papers' {0.01, 1e-3, 1e-4, 0}"
    )
    sweep.add_argument(
        "--seeds", type=int, nargs="+", default=sweep_defaults.seeds, help="default: %(default)s"
    )
    sweep.add_argument(
        "--output-dir", default=sweep_defaults.output_dir, help="default: %(default)s"
    )
    sweep.add_argument(
        "--devices",
        nargs="+",
        help="run trials in parallel, one worker process per device (e.g. cuda:0 cuda:1)",
    )
    sweep.add_argument("--task-name", help="name in folders and reports (default: the task's)")
    sweep.add_argument(
        "--group", help="report group (default: the task's: VTAB group, fgvc, cifar100-lt)"
    )
    sweep.add_argument(
        "--prune",
        action="store_true",
        help="e2vpt: also prune (fractions chosen on val) and report the pruned model",
    )
    _add_pruning_flags(sweep, "prune-")
    ray_defaults = RaySettings()
    ray = sweep.add_argument_group("Ray engine (pip install 'e2vpt[ray]')")
    ray.add_argument(
        "--engine",
        choices=("local", "ray"),
        default=sweep_defaults.engine,
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
    _add_train_flags(sweep, skip={"method_config", *SWEEP_OWNED})

    report = sub.add_parser(
        "report",
        help="tabulate every sweep under a folder (Markdown + CSV + JSON + plot)",
        description="Per-task mean ± std, VTAB group means, the mean of group means, the task "
        "mean, FGVC mean, CIFAR-100-LT error, tunable parameters; plus accuracy vs tunable "
        "parameters as a PNG.",
    )
    report.add_argument("runs_dir", type=Path, help="the --output-dir of `e2vpt sweep`")
    report.add_argument("--output-dir", type=Path, help="default: RUNS_DIR")
    report.add_argument("--name", default="report", help="file stem (default: %(default)s)")
    report.add_argument(
        "--anchors",
        action="store_true",
        help="add the papers' published numbers (ViT-B/16) as rows",
    )
    report.add_argument(
        "--include-running",
        action="store_true",
        help="also sweeps not finished yet (their seeds so far)",
    )

    pred = sub.add_parser(
        "predict",
        help="classify images with a trained run folder",
        description="Top-k classes of each image, decoded and resized as the run's "
        "evaluation saw them. Unreadable images are reported and skipped (exit code 1).",
    )
    pred.add_argument("run_dir", type=Path)
    pred.add_argument(
        "inputs", nargs="+", help="image files, folders (searched at any depth), globs"
    )
    pred.add_argument("--output", type=Path, help="write the predictions to a .csv or .jsonl file")
    pred.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    pred.add_argument("--top-k", type=int, default=5, help="classes per image (default: 5)")
    pred.add_argument("--batch-size", type=int, default=64, help="images per forward (default: 64)")
    pred.add_argument("--device", default="auto", help=DEVICE_HELP)
    pred.add_argument("--precision", default="fp32", help="fp32 | bf16 | auto")
    pred.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a progress bar on stderr (default: on)",
    )

    exp = sub.add_parser(
        "export",
        help="write a run's model as one ONNX / TorchScript / ExportedProgram file",
        description="The whole model (backbone, prompts, head) and its input normalisation "
        "in one file: input float32 (N, 3, S, S) RGB pixels 0-255, resized as `e2vpt "
        "predict` resizes; output logits. The file is run on sample inputs and compared "
        "with PyTorch before it is kept.",
    )
    exp.add_argument("run_dir", type=Path)
    exp.add_argument("--format", default="onnx", help="onnx | torchscript | exported-program")
    exp.add_argument("--output", type=Path, help="file to write (default: RUN_DIR/model.<ext>)")
    exp.add_argument("--batch", default="dynamic", help="dynamic, or a fixed batch size")
    exp.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    exp.add_argument(
        "--weights",
        help="the backbone's weights file, when the path the run stored does not hold it here",
    )

    srv = sub.add_parser(
        "serve",
        help="serve many tasks on one backbone over HTTP",
        description="One frozen backbone and every --adapter task behind an HTTP API "
        "(FastAPI + uvicorn; OpenAPI page at /docs). Requests for any of the tasks that "
        "arrive within --max-wait-ms run as one batch.",
    )
    srv.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=RUN_DIR",
        help="a task to serve (repeat the flag for more)",
    )
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    srv.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    srv.add_argument(
        "--max-batch-size", type=int, default=32, help="images per forward at most (default: 32)"
    )
    srv.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a batch waits for more requests after its first (default: 5)",
    )
    srv.add_argument(
        "--max-image-bytes",
        type=int,
        default=20 * 2**20,
        help="larger uploads get 413 (default: 20 MiB)",
    )
    srv.add_argument(
        "--max-queue",
        type=int,
        default=1024,
        help="requests waiting for a batch beyond which new ones get 503 (default: 1024)",
    )
    srv.add_argument("--device", default="auto", help=DEVICE_HELP)
    srv.add_argument(
        "--batching",
        choices=("across-tasks", "per-task"),
        default="across-tasks",
        help="across-tasks: one batch mixes every task's requests (default); per-task: a "
        "batch holds one task's requests (for comparison)",
    )
    srv.add_argument(
        "--adapters-dir",
        help="the only folder POST /v1/tasks may load run folders from (default: none)",
    )

    evaluate = sub.add_parser("eval", help="evaluate a trained run folder")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("--data", help="task to evaluate on (default: the run's own)")
    evaluate.add_argument("--split", default="test", help="the task split to score (default: test)")
    evaluate.add_argument(
        "--batch-size", type=int, default=256, help="images per forward (default: 256)"
    )
    evaluate.add_argument("--device", default="auto", help=DEVICE_HELP)
    evaluate.add_argument(
        "--weights",
        help="the backbone's weights file, when the path the run stored does not hold it here "
        "(a run made on another machine)",
    )
    evaluate.add_argument(
        "--precision",
        default="auto",
        help="auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 (default: auto)",
    )
    evaluate.add_argument(
        "--ignore-class-names",
        action="store_true",
        help="score even when the data's class names differ from the run's (labels are "
        "then taken to mean the same classes by position)",
    )

    prune = sub.add_parser(
        "prune",
        help="E²VPT token/segment pruning + rewinding of a trained e2vpt run",
        description="Score every visual token and segment by the gradient of the training "
        "loss w.r.t. its mask, then for each (token fraction × segment fraction) of the grid "
        "prune, rewind the survivors to their initial values and retrain with the run's own "
        "hyper-parameters; the best on val (ties → more pruning) becomes the final pruned "
        "checkpoint. Killed mid-grid, the same command resumes.",
    )
    prune.add_argument(
        "--from", dest="run_dir", type=Path, required=True, help="run folder of an e2vpt run"
    )
    _add_pruning_flags(prune, "")
    prune.add_argument(
        "--recipe",
        choices=RECIPES,
        help="default: the run's own (a run is pruned with the recipe it was trained with)",
    )
    prune.add_argument(
        "--output-dir", help="report + final pruned checkpoint (default: RUN_DIR/pruned)"
    )
    prune.add_argument(
        "--epochs", type=int, help="retraining epochs per grid point (default: the run's own)"
    )
    prune.add_argument("--device", help="default: the run's own")
    prune.add_argument(
        "--weights", help="the backbone's weights file (default: the path the run stored)"
    )
    prune.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bars"
    )

    info = sub.add_parser("info", help="parameter accounting for a backbone × method")
    info.add_argument(
        "--backbone",
        nargs="+",
        default=[DEMO_BACKBONE],
        help="one or more timm names (computed on the meta device: no weights, no memory)",
    )
    info.add_argument(
        "--num-classes", type=int, default=100, help="head size the counts assume (default: 100)"
    )
    info.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help=f"methods to list (default: {' '.join(list_methods())})",
    )
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.add_argument(
        "--recipes",
        action="store_true",
        help="the choices that decide what a run learns: the official code's, the default "
        "recipe's and --recipe official's",
    )
    info.add_argument(
        "--wide",
        action="store_true",
        help="one row per backbone, one column per method (tunable without head, %% of backbone)",
    )
    info.add_argument("--visual-tokens", type=int, default=None, help="E²VPT / VPT prompt tokens")
    info.add_argument("--kv-tokens", type=int, default=None, help="E²VPT key-value tokens")
    _add_method_flags(info, skip={"visual_tokens", "kv_tokens"})
    return parser


def config_from_args(
    args: argparse.Namespace, argv: Sequence[str], exclude: frozenset[str] = frozenset()
) -> TrainConfig:
    values: dict[str, Any] = {}
    if args.config is not None:
        values = TrainConfig.from_yaml(args.config).to_dict()
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    skip = {*NOT_CONFIG_FLAGS, *exclude}
    given = {k: v for k, v in vars(args).items() if k not in skip}
    method_values = dict(values.get("method_config") or {})
    for key, value in given.items():
        if key in train_fields:
            values[key] = value
        else:
            method_values[key] = value
    quickstart = getattr(args, "quickstart", False) or (
        args.command == "train" and not argv and args.config is None
    )
    if quickstart:
        values = {**QUICKSTART, **values}
    cfg = TrainConfig.from_dict({**values, "method_config": method_values})
    if cfg.output_dir is None and args.command == "train":
        base = "runs/quickstart" if quickstart else None
        cfg = dataclasses.replace(
            cfg,
            output_dir=str(fresh_folder(base)) if base else cfg.default_output_dir(),
        )
    owners = method_option_owners()
    spec_name = cfg.method
    for key in method_values:
        if key in owners and not any(spec_name.replace("_", "-") == o for o in owners[key]):
            raise ConfigError(
                f"{_flag(key)} does not apply to method {spec_name!r}; it belongs to "
                f"{', '.join(owners[key])}"
            )
    cfg.validate()
    return cfg


def cmd_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
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


def resumed_config(args: argparse.Namespace) -> TrainConfig:
    """``--resume``: the run folder's own config; flags may change runtime fields only
    (paths compared in their absolute form: ``--data data`` matches the stored one)."""
    given = {k: v for k, v in vars(args).items() if k not in NOT_CONFIG_FLAGS}
    if args.config is not None:
        raise ConfigError("--resume reads the settings from the run folder; drop --config")
    out = given.pop("output_dir", None)
    if out is None:
        raise ConfigError("--resume needs --output-dir RUN_FOLDER (the run to continue)")
    if not has_train_config(out):
        raise ConfigError(
            f"{out} holds no run to resume (no {TRAIN_CONFIG_FILE}); start it without --resume"
        )
    cfg, differs = resumed_settings(read_train_config(out), given)
    if differs:
        shown = ", ".join(
            f"{_flag(k)} {given.get(k, now)} differs from the run's {then}"
            for k, (then, now) in differs.items()
        )
        raise ConfigError(
            f"--resume continues {out} as it was started: {shown}; drop the flag, or start a "
            "new run (--overwrite, or another --output-dir)"
        )
    cfg = dataclasses.replace(cfg, output_dir=out)
    cfg.validate()
    return cfg


def _train_and_report(cfg: TrainConfig, existing: str) -> int:
    from e2vpt.training.trainer import (
        linear_probe_search,
        load_task_for,
        preflight,
        results_table,
        train,
    )

    preflight(cfg, existing=existing)
    method_cfg = cfg.build_method_config()
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
        grid = [default.resolved_base_lr() * f for f in (0.25, 1.0, 4.0)]
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
    print(
        f"\nrun folder: {cfg.output_dir} (adapter.safetensors, adapter.json, metrics.csv, "
        "results.json)"
    )
    return 0


def cmd_sweep(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from e2vpt.sweeps.protocol import SweepSettings, run_sweep, sweep_markdown

    cfg = config_from_args(args, argv, exclude=frozenset(SWEEP_FLAGS))
    settings = SweepSettings(
        base_lrs=args.base_lrs,
        weight_decays=args.weight_decays,
        seeds=args.seeds,
        output_dir=args.output_dir,
        devices=args.devices,
        task_name=args.task_name,
        group=args.group,
        prune=args.prune,
        prune_token_fractions=args.prune_token_fractions,
        prune_segment_fractions=args.prune_segment_fractions,
        prune_score=args.prune_score,
        prune_mode=args.prune_mode,
        progress=cfg.progress,
        engine=args.engine,
        ray=RaySettings(
            address=args.address,
            cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial,
            max_concurrent_trials=args.max_concurrent_trials,
            asha=args.asha,
            asha_grace_period=args.asha_grace_period,
            asha_reduction_factor=args.asha_reduction_factor,
        ),
    )
    print(
        f"e2vpt sweep: {cfg.method} on {cfg.data} with backbone {cfg.backbone} → "
        f"{settings.output_dir}",
        file=sys.stderr,
    )
    summary = run_sweep(cfg, settings)
    print()
    print(sweep_markdown(summary))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
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


def cmd_eval(args: argparse.Namespace) -> int:
    from e2vpt.inference import model_data_settings, resolve_device, top1

    require_complete(args.run_dir, "evaluate")
    meta = read_config(args.run_dir)
    data = args.data
    data_seed, val_fraction = 0, None
    if has_train_config(args.run_dir):
        run_cfg = read_train_config(args.run_dir)
        data = data or run_cfg.data
        data_seed = run_cfg.data_seed
        if absolute_data_spec(data) == run_cfg.data:  # its own data: the val it held out
            val_fraction = run_cfg.val_fraction
    if data is None:
        raise ConfigError(f"{args.run_dir} has no {TRAIN_CONFIG_FILE}; pass --data")
    device = resolve_device(args.device)
    model = load(args.run_dir, backbone=_backbone_for(meta, args.weights, args.run_dir))
    image_size, normalizer = model_data_settings(model)
    task = load_task(data, image_size, seed=data_seed, val_fraction=val_fraction)
    if task.num_classes != meta["num_classes"]:
        raise CheckpointError(
            f"{data} has {task.num_classes} classes but the checkpoint in {args.run_dir} has a "
            f"{meta['num_classes']}-class head; evaluate on the task it was trained for"
        )
    _check_class_names(model.class_names, task.classes, data, args)
    model = model.to(device)
    acc = top1(
        model,
        task.split(args.split),
        normalizer.to(device),
        device,
        args.precision,
        args.batch_size,
    )
    row = {
        "run": str(args.run_dir),
        "method": meta["method"],
        "data": data,
        "split": args.split,
        "images": len(task.split(args.split)),
        "top-1 %": round(100 * acc, 2),
    }
    print(format_table([row]))
    # named by dataset and split: evaluating on other data never replaces a result
    path = args.run_dir / eval_result_file(_data_label(data), args.split)
    write_json(path, row)
    print(f"\nwritten: {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from e2vpt.export import EXPORT_FORMATS, check_output, deployable, export_model, parse_batch
    from e2vpt.inference import model_data_settings

    if args.format not in EXPORT_FORMATS:
        raise ConfigError(
            f"unknown --format {args.format!r}; choose one of {', '.join(EXPORT_FORMATS)}"
        )
    output = args.output or args.run_dir / f"model{EXPORT_FORMATS[args.format]}"
    batch = parse_batch(args.batch)
    check_output(output, args.format, args.overwrite)
    require_complete(args.run_dir, "export")
    meta = read_config(args.run_dir)
    model = load(args.run_dir, backbone=_backbone_for(meta, args.weights, args.run_dir))
    size, normalizer = model_data_settings(model.eval())
    mean = tuple(normalizer.mean.flatten().div(255).tolist())
    std = tuple(normalizer.std.flatten().div(255).tolist())
    print(f"exporting {args.run_dir} ({meta['method']}) as {args.format} …", file=sys.stderr)
    report = export_model(
        deployable(model, mean, std), size, args.format, output, batch, args.opset, args.overwrite
    )
    print(
        format_table(
            [
                {
                    "format": report.format,
                    "file": report.output,
                    "MiB": round(report.bytes / 2**20, 2),
                    "batch": report.batch,
                    "input": f"float32 (N, 3, {size}, {size}), 0-255",
                    "max |Δlogit| vs PyTorch": f"{report.max_abs_logit_error:.2e}",
                    "s": report.seconds,
                }
            ]
        )
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    adapters: dict[str, str] = {}
    for item in args.adapter:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise ConfigError(f"--adapter {item!r}: write NAME=RUN_DIR, e.g. pets=runs/pets")
        if name in adapters:
            raise ConfigError(f"--adapter: task name {name!r} given twice")
        adapters[name] = folder
    try:
        from e2vpt.serving import ServeSettings, serve
    except ImportError:
        raise ConfigError(
            "e2vpt serve needs FastAPI, uvicorn and prometheus-client: pip install 'e2vpt[serve]'"
        ) from None
    settings = ServeSettings(
        adapters=adapters,
        host=args.host,
        port=args.port,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        device=args.device,
        max_image_bytes=args.max_image_bytes,
        adapters_dir=args.adapters_dir,
        batching=args.batching,
        max_queue=args.max_queue,
    )
    serve(settings)  # validates the settings before loading anything
    return 0


PREDICTION_FORMATS = (".csv", ".jsonl")


def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from e2vpt.predict import Failure, Prediction, Predictor, find_images, throughput

    output: Path | None = args.output
    if output is not None:
        if output.suffix not in PREDICTION_FORMATS:
            raise ConfigError(
                f"--output {output}: name a .csv or .jsonl file (the suffix picks the format)"
            )
        if output.exists() and not args.overwrite:
            raise ConfigError(
                f"{output} exists; pass --overwrite to replace it, or another --output"
            )
        check_writable(output.parent, flag="--output")
    if args.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {args.top_k}")
    paths = find_images(args.inputs)
    predictor = Predictor(
        args.run_dir,
        device=args.device,
        batch_size=args.batch_size,
        precision=args.precision,
        top_k=args.top_k,
    )
    for note_text in predictor.notes:
        print(f"note: {note_text}", file=sys.stderr)
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
        atomic_write_text(output, _predictions_text(rows, output.suffix))
    else:
        table = [
            {"image": r.path, "class": r.classes[0], "p": round(r.probabilities[0], 4)}
            | ({"next": ", ".join(r.classes[1:3])} if len(r.classes) > 1 else {})
            for r in rows
        ]
        print(format_table(table))
    print(f"\npredicted {throughput(len(rows), elapsed)}", file=sys.stderr)
    if output is not None:
        print(f"written: {output}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} image(s) could not be read and were skipped", file=sys.stderr)
        return 1
    return 0


def _predictions_text(rows: list[Any], suffix: str) -> str:
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


def _data_label(data: str) -> str:
    """A short file-name label that still tells datasets apart: a built-in task's name,
    else the folder's name and a hash of its absolute path (``pets-3fa2c1``)."""
    if data.startswith(BUILTIN_PREFIX):
        return readable_name(data)
    spec = absolute_data_spec(data)
    digest = hashlib.sha256(spec.encode()).hexdigest()[:6]
    return f"{readable_name(Path(spec.split(':')[-1]).name, 40)}-{digest}"


def _backbone_for(meta: dict[str, Any], weights: str | None, run_dir: Path) -> Any:
    """The run's backbone: with ``--weights`` when given; a stored weights path that does
    not exist here is an error naming the flag (checked before anything is loaded)."""
    if weights is None:
        check_weights_file(meta.get("backbone_weights"), trained_in=run_dir)
        return None  # rebuilt from adapter.json
    check_weights_file(weights)
    return create_backbone(meta["backbone"], weights=weights)


def _check_class_names(
    trained: list[str] | None, given: list[str], data: str, args: argparse.Namespace
) -> None:
    """Label i must mean the same class in the data as in the run."""
    if trained is None:
        print(
            f"e2vpt eval: {args.run_dir} stores no class names (saved before e2vpt stored "
            f"them); assuming {data}'s labels mean the run's classes",
            file=sys.stderr,
        )
        return
    given = [str(c) for c in given]
    if given == trained or args.ignore_class_names:
        return
    index = next(i for i, (a, b) in enumerate(zip(trained, given, strict=True)) if a != b)
    raise CheckpointError(
        f"{data}'s classes are not the ones {args.run_dir} was trained on (label {index}: "
        f"{given[index]!r} here, {trained[index]!r} in the run); evaluate on the run's own "
        "classes, or pass --ignore-class-names to score by label position anyway"
    )


def cmd_prune(args: argparse.Namespace) -> int:
    from e2vpt.pruning.search import prune_run

    settings = PruneSettings(
        token_fractions=args.token_fractions,
        segment_fractions=args.segment_fractions,
        score=args.score,
        prune_mode=args.prune_mode,
        recipe=args.recipe,
        output_dir=args.output_dir,
        epochs=args.epochs,
        device=args.device,
        weights=args.weights,
        progress=args.progress,
    )
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
        f"pruned checkpoint + report: {report.output_dir} (adapter.safetensors, "
        "pruning_report.{md,csv,json}, pruning_curve.png)"
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from e2vpt.accounting import count_parameters

    if args.recipes:
        rows = choices_table()
        print(json.dumps(rows, indent=2) if args.json else format_table(rows))
        return 0
    names = [canonical_name(b) for b in args.backbone]
    methods = args.methods or list_methods()
    owners = method_option_owners()
    # method options given as flags (--visual-tokens / --kv-tokens: size_options below)
    given = {k: v for k, v in vars(args).items() if k in owners and v is not None}
    configs = []
    for method in methods:
        spec = get_method(method)
        fields = {f.name for f in dataclasses.fields(spec.config_cls)}
        options = spec.config_cls.size_options(args.visual_tokens, args.kv_tokens)
        options |= {k: v for k, v in given.items() if k in fields}
        try:
            configs.append(method_config(method, options))
        except ConfigError as err:
            if args.methods:  # asked for by name: its missing option is the error
                raise
            print(f"(skipped {method}: {err})", file=sys.stderr)
    rows = []
    for name in names:
        for config in configs:
            # meta device: no memory and no weights needed, even for ViT-H
            with torch.device("meta"):
                backbone = create_backbone(name, pretrained=False)
            model = wrap(backbone, config.for_restore(), args.num_classes)  # sizes only
            counts = count_parameters(model)
            described = config.describe_size()
            row = {"backbone": name} if len(names) > 1 else {}
            rows.append(
                row
                | {
                    "method": config.method_name,
                    "options": described,
                    "tunable": counts.tunable,
                    "without head": counts.tunable_without_head,
                    "% of backbone": counts.percent,
                    "backbone params": counts.backbone,
                }
            )
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.wide:
        print(format_table(_wide_info(rows, names, args.num_classes)))
    else:
        print(f"backbone {', '.join(names)}, {args.num_classes} classes")
        print(format_table(rows, float_digits=3))
    return 0


def _wide_info(rows: list[dict[str, Any]], names: list[str], classes: int) -> list[dict]:
    """Backbones as rows: what each method adds to the frozen backbone (head apart)."""
    table = []
    for name in names:
        mine = [r for r in rows if r.get("backbone", name) == name]
        total = mine[0]["backbone params"]
        heads = {r["tunable"] - r["without head"] for r in mine}
        row: dict[str, Any] = {"backbone": name, "params": f"{total / 1e6:.1f} M"}
        for r in mine:
            row[r["method"]] = f"{r['without head']:,} ({100 * r['without head'] / total:.3f} %)"
        row[f"head ({classes} classes)"] = f"{max(heads):,}"
        table.append(row)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    previous = _stop_on_sigterm()
    try:
        if args.command == "train":
            return cmd_train(args, argv[1:])
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "predict":
            return cmd_predict(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "prune":
            return cmd_prune(args)
        if args.command == "info":
            return cmd_info(args)
        if args.command == "sweep":
            return cmd_sweep(args, argv[1:])
        if args.command == "report":
            return cmd_report(args)
    except USER_ERRORS as err:
        print(f"e2vpt {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        said = str(err) if isinstance(err, Interrupted) and args.command == "train" else ""
        print(
            f"\ne2vpt {args.command}: interrupted; {said or INTERRUPTED[args.command]}",
            file=sys.stderr,
        )
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    parser.print_help()
    return 0


def _stop_on_sigterm() -> Any:
    """SIGTERM (``kill``, a scheduler's preemption, torchrun stopping its workers) stops
    a command like Ctrl-C: cleanly, with what was kept and how to go on."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (e.g. called from a worker thread)
        return None


if __name__ == "__main__":
    sys.exit(main())
