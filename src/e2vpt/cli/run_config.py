"""The run config from the command line: :class:`TrainConfig` fields and every registered
method's options as flags (``train``, ``sweep``; ``info`` takes the method options), and
the config they make, merged with ``--config`` YAML. Paths given are resolved here, once,
against the working directory they were given in."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any

from e2vpt.cli.flags import add_dataclass_flags, flag_name

# parsed arguments that choose what to do, not config fields
NOT_CONFIG_FLAGS = frozenset(
    {"command", "config", "quickstart", "resume", "overwrite", "run_command"}
)


def method_option_owners() -> dict[str, list[str]]:
    """Method option name → the method names that have it."""
    from e2vpt.methods.base import registered_methods

    owners: dict[str, list[str]] = {}
    for spec in registered_methods():
        fixed = {k for k, _ in spec.fixed}
        for f in dataclasses.fields(spec.config_cls):
            if f.name not in fixed:
                owners.setdefault(f.name, []).append(spec.name)
    return owners


def _method_config_classes() -> list[type]:
    from e2vpt.methods.base import registered_methods

    seen: list[type] = []
    for spec in registered_methods():
        if spec.config_cls not in seen:
            seen.append(spec.config_cls)
    return seen


def add_train_flags(parser: argparse.ArgumentParser, skip: set[str]) -> None:
    """Every :class:`TrainConfig` field (but ``skip``) and every method option."""
    from e2vpt.methods.base import list_methods
    from e2vpt.training.config import TrainConfig

    parser.add_argument("--config", type=str, help="YAML file of config fields (flags override it)")
    add_dataclass_flags(
        parser, TrainConfig, skip=skip, help_overrides={"method": " | ".join(list_methods())}
    )
    add_method_flags(parser)


def add_method_flags(
    parser: argparse.ArgumentParser, skip: frozenset[str] | set[str] = frozenset()
) -> None:
    """One flag per method option (an option several methods share: one flag)."""
    group = parser.add_argument_group("method options (see `e2vpt info`)")
    added: set[str] = set(skip)
    for cls in _method_config_classes():
        fields = {f.name for f in dataclasses.fields(cls)} - added - {"deep"}
        add_dataclass_flags(
            group,
            cls,
            skip={f.name for f in dataclasses.fields(cls)} - fields,
            help_prefix=f"[{cls.name}] ",
        )
        added |= fields


def config_from_args(
    args: argparse.Namespace, argv: Sequence[str], exclude: frozenset[str] = frozenset()
) -> Any:
    """The :class:`TrainConfig` the flags (and ``--config``) describe, with its paths
    absolute and validated whole."""
    from e2vpt.errors import ConfigError
    from e2vpt.runs import fresh_folder
    from e2vpt.training.config import QUICKSTART, TrainConfig

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
    for key in method_values:
        if key in owners and cfg.method.replace("_", "-") not in owners[key]:
            raise ConfigError(
                f"{flag_name(key)} does not apply to method {cfg.method!r}; it belongs to "
                f"{', '.join(owners[key])}"
            )
    cfg.validate()
    return cfg.with_absolute_paths()  # resolved here, once, against the working directory


def resumed_config(args: argparse.Namespace) -> Any:
    """``--resume``: the run folder's own config; flags may change runtime fields only
    (paths compared in their absolute form: ``--data data`` matches the stored one)."""
    from e2vpt.errors import ConfigError
    from e2vpt.runs import TRAIN_CONFIG_FILE, has_train_config, read_train_config, resumed_settings

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
            f"{flag_name(k)} {given.get(k, now)} differs from the run's {then}"
            for k, (then, now) in differs.items()
        )
        raise ConfigError(
            f"--resume continues {out} as it was started: {shown}; drop the flag, or start a "
            "new run (--overwrite, or another --output-dir)"
        )
    cfg = dataclasses.replace(cfg, output_dir=out)
    cfg.validate()
    return cfg.with_absolute_paths()
