"""Does the run in a folder match these settings? One answer, used wherever e2vpt
decides it: the trainer (refuse, reuse, resume or replace a run folder), ``--resume``
(flags may change runtime fields only), sweep trials and pruning rewinds (which
continue their own runs and replace others').

Settings are compared the way they act: paths in their absolute form (a run started
with ``--data data`` and resumed with ``--data data`` from the same folder matches the
stored ``/…/data``), a method's options as the method resolves them (an option given at
its default matches one left out), runtime fields (where, how fast, how visibly) not at
all. The TrainConfig class is imported only when settings are compared."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from e2vpt.errors import ConfigError
from e2vpt.runs.names import RUN_IDENTITY_FILE, TRAIN_CONFIG_FILE
from e2vpt.runs.records import read_record

if TYPE_CHECKING:
    from e2vpt.training.config import TrainConfig

Differences = dict[str, tuple[Any, Any]]


def setting_differences(saved: TrainConfig, wanted: TrainConfig) -> Differences:
    """The settings (runtime fields apart) in which ``wanted`` differs from ``saved``:
    name → (saved value, wanted value); a method option by its own name. Invalid
    ``wanted`` options are the caller's error (ConfigError); invalid saved ones make the
    whole ``method_config`` differ."""
    from e2vpt.training.config import RUNTIME_FIELDS

    mine = saved.with_absolute_paths().to_dict()
    theirs = wanted.with_absolute_paths().to_dict()
    differs = {
        k: (mine[k], theirs[k])
        for k in mine
        if k not in RUNTIME_FIELDS and k != "method_config" and mine[k] != theirs[k]
    }
    if "method" not in differs:
        differs.update(_option_differences(saved, wanted))
    return differs


def _option_differences(saved: TrainConfig, wanted: TrainConfig) -> Differences:
    theirs = wanted.build_method_config().to_dict()
    try:
        mine = saved.build_method_config().to_dict()
    except ConfigError:
        return {"method_config": (saved.method_config, wanted.method_config)}
    return {
        k: (mine.get(k), theirs.get(k))
        for k in sorted({*mine, *theirs})
        if mine.get(k) != theirs.get(k)
    }


def run_differences(
    run_dir: str | os.PathLike[str],
    wanted: TrainConfig,
    identity: dict[str, Any] | None = None,
) -> Differences:
    """How the run stored in ``run_dir`` differs from ``wanted`` (and from the
    ``identity`` the caller computes beyond its config, e.g. a rewind's pruning plan).
    A folder without a readable config differs in ``train_config.yaml`` itself."""
    from e2vpt.training.config import TrainConfig

    out = Path(run_dir)
    if not (out / TRAIN_CONFIG_FILE).is_file():
        return {TRAIN_CONFIG_FILE: ("missing", "needed")}
    try:
        saved = TrainConfig.from_run_folder(out)
    except ConfigError as err:
        return {TRAIN_CONFIG_FILE: (str(err), "readable")}
    differs = setting_differences(saved, wanted)
    saved_identity = read_record(out / RUN_IDENTITY_FILE)
    if saved_identity != (None if identity is None else json.loads(json.dumps(identity))):
        differs["identity"] = (saved_identity, identity)
    return differs


def resumed_settings(
    saved: TrainConfig, changes: dict[str, Any]
) -> tuple[TrainConfig, Differences]:
    """``saved`` continued with ``changes`` (TrainConfig fields and method options by
    name): the config to resume with (runtime fields changed, every other setting as
    the run stored it) and the settings ``changes`` would alter (a resume refuses those)."""
    from e2vpt.training.config import RUNTIME_FIELDS

    fields = {f.name for f in dataclasses.fields(saved)}
    options = {k: v for k, v in changes.items() if k not in fields}
    train_values = {k: v for k, v in changes.items() if k in fields}
    wanted = dataclasses.replace(
        saved, **train_values, method_config={**(saved.method_config or {}), **options}
    )
    runtime = {k: v for k, v in train_values.items() if k in RUNTIME_FIELDS}
    return dataclasses.replace(saved, **runtime), setting_differences(saved, wanted)
