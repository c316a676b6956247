"""Reading what a run folder records: its training config, its checkpoint's rebuild
recipe (``adapter.json``), its results and the JSON records e2vpt steps keep beside it,
each through the bounds and checks of :mod:`e2vpt.runs.schema`.

Light on purpose (the command line reads run folders before any heavy import): the
TrainConfig class is imported when a config is read, not when this module is."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from e2vpt.errors import CheckpointError, ConfigError, E2VPTError
from e2vpt.runs.names import ADAPTER_CONFIG_FILE, RESULTS_FILE, TRAIN_CONFIG_FILE
from e2vpt.runs.schema import check_adapter_config, read_json

if TYPE_CHECKING:
    from e2vpt.training.config import TrainConfig


def has_train_config(run_dir: str | os.PathLike[str]) -> bool:
    return (Path(run_dir) / TRAIN_CONFIG_FILE).is_file()


def holds_checkpoint(run_dir: str | os.PathLike[str]) -> bool:
    """Whether ``run_dir`` has a checkpoint's rebuild recipe (finished or not)."""
    return (Path(run_dir) / ADAPTER_CONFIG_FILE).is_file()


def read_train_config(run_dir: str | os.PathLike[str], if_missing: str = "") -> TrainConfig:
    """The config the run in ``run_dir`` was trained with (see
    ``TrainConfig.from_run_folder`` for runs saved before recipes). A folder without
    ``train_config.yaml`` is an error; ``if_missing`` says why it was needed, what to do."""
    from e2vpt.training.config import TrainConfig

    if not has_train_config(run_dir):
        raise ConfigError(
            f"{run_dir} has no {TRAIN_CONFIG_FILE}" + (f", {if_missing}" if if_missing else "")
        )
    return TrainConfig.from_run_folder(run_dir)


def read_adapter_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's ``adapter.json``: what to rebuild (method, options, head size,
    backbone), checked field by field (:func:`e2vpt.runs.schema.check_adapter_config`)
    before anything is built from it."""
    directory = Path(run_dir)
    path = directory / ADAPTER_CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"no {ADAPTER_CONFIG_FILE} in {directory}: not an e2vpt checkpoint folder "
            "(e2vpt.save / `e2vpt train` write one)"
        )
    return check_adapter_config(read_json(path, CheckpointError), path)


def read_record(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A JSON record e2vpt wrote (a trial's, a pruning point's, a run's identity), or
    None when it is absent or unreadable (too large, not UTF-8, not JSON, too deeply
    nested, not a mapping): the step it records is then done again."""
    try:
        data = read_json(Path(path), ConfigError)
    except E2VPTError:
        return None
    return data if isinstance(data, dict) else None


def read_results(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """A finished run's ``results.json`` (its scores and parameter counts)."""
    path = Path(run_dir) / RESULTS_FILE
    results = read_json(path, ConfigError)
    if not isinstance(results, dict):
        raise ConfigError(f"{path} is corrupt: not a mapping of results")
    return results
