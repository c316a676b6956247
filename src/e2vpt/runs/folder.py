"""A run folder is a transaction: a new run never writes over another, and a run counts
as finished only once its last file, ``run_complete.json``, is written.

While it trains, a run folder holds ``train_config.yaml`` (written first), the metrics so
far and ``train_state.pt`` (everything needed to continue, rewritten atomically after
every epoch). At the end come the checkpoint, ``results.json`` and, last, the marker; the
training state is then deleted. Readers (``eval``, ``prune``, ``e2vpt.load``) refuse a
folder without the marker and say how to finish it. Runs written before the marker
existed count as complete when they hold ``results.json`` and no training state (their
``results.json`` was always written last).

Imports nothing of e2vpt's but the leaves (errors, files), the file names and the
bounded readers of :mod:`e2vpt.runs.schema`."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2vpt.errors import ConfigError, E2VPTError
from e2vpt.files import atomic_write_text
from e2vpt.runs.names import (
    METRICS_JSON_FILE,
    RESULTS_FILE,
    RUN_COMPLETE_FILE,
    RUN_FILES,
    SIDE_FILES,
    TRAIN_CONFIG_FILE,
    TRAIN_STATE_FILE,
)
from e2vpt.runs.schema import read_json, read_yaml_mapping

# what ``train(existing=...)`` does with a folder that already holds a run:
#   refuse    — an error naming the fixes (the CLI's default)
#   overwrite — delete the old run's files first, so nothing of it survives
#   resume    — continue the run from its last finished epoch (same config)
#   continue  — resume when the folder holds this very run unfinished, reuse it when
#               finished, and start afresh otherwise (sweep trials, rewinds)
EXISTING_MODES = ("refuse", "overwrite", "resume", "continue")


@dataclass(frozen=True)
class RunFolder:
    """What a folder holds: ``absent``, ``empty`` (nothing, or only e2vpt's side files and
    hidden temp files), ``complete``, ``incomplete`` (a run that has not finished: stopped,
    killed or still training) or ``foreign`` (files that are not an e2vpt run)."""

    path: Path
    kind: str
    epochs_done: int = 0
    epochs: int | None = None

    @property
    def holds_run(self) -> bool:
        return self.kind in ("complete", "incomplete")

    def describe(self) -> str:
        if self.kind == "complete":
            return "a finished run"
        if self.kind == "incomplete":
            total = f" of {self.epochs}" if self.epochs else ""
            return f"an unfinished run (stopped after epoch {self.epochs_done}{total})"
        return "files of no e2vpt run" if self.kind == "foreign" else "nothing"

    def refusal(self, flag: str = "`output_dir`") -> ConfigError:
        """The error for a new run aimed at this folder."""
        if self.kind == "foreign":
            return ConfigError(
                f"{self.path} is not empty and holds no e2vpt run; choose another {flag} "
                "(e2vpt never deletes files it did not write)"
            )
        resume = " `resume` to continue it," if self.kind == "incomplete" else ""
        return ConfigError(
            f"{self.path} already holds {self.describe()}; pass{resume} `overwrite` to replace "
            f"it, or choose another {flag}"
        )


def absolute(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute against the working directory, resolved once (symlinks kept,
    as ``TrainConfig.with_absolute_paths`` keeps them): what e2vpt stores and compares, so
    a worker with another working directory (a Ray trial) reads and writes the same place."""
    return Path(os.path.abspath(path))


def inspect_folder(path: str | os.PathLike[str]) -> RunFolder:
    """What ``path`` holds, read from its file names (and the run's epochs so far)."""
    path = Path(path)
    if not path.exists():
        return RunFolder(path, "absent")
    if not path.is_dir():
        return RunFolder(path, "foreign")
    names = {p.name for p in path.iterdir() if not p.name.startswith(".")}
    if not names & set(RUN_FILES):
        return RunFolder(path, "empty" if names <= set(SIDE_FILES) else "foreign")
    epochs = _configured_epochs(path)
    done = _epochs_done(path)
    complete = (
        RUN_COMPLETE_FILE in names
        or TRAIN_CONFIG_FILE not in names  # a checkpoint saved on its own (e2vpt.save, prune)
        or (RESULTS_FILE in names and TRAIN_STATE_FILE not in names)
    )
    return RunFolder(path, "complete" if complete else "incomplete", done, epochs)


def _configured_epochs(path: Path) -> int | None:
    """The run's epochs, for the description (None when its config cannot be read)."""
    try:
        epochs = read_yaml_mapping(path / TRAIN_CONFIG_FILE).get("epochs")
    except E2VPTError:
        return None
    return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None


def _epochs_done(path: Path) -> int:
    try:
        rows = read_json(path / METRICS_JSON_FILE, ConfigError)
    except E2VPTError:
        return 0
    return len(rows) if isinstance(rows, list) else 0


def clear(folder: RunFolder) -> None:
    """Delete an e2vpt run folder's files (``--overwrite``); anything else is refused."""
    if folder.kind == "foreign":
        raise folder.refusal()
    if folder.holds_run:
        # renamed first: the folder name is free at once, even if deleting takes a while
        trash = folder.path.with_name(f".{folder.path.name}.replaced-{os.getpid()}")
        try:
            folder.path.rename(trash)
        except OSError:
            trash = folder.path
        shutil.rmtree(trash)


def mark_complete(path: Path, summary: dict[str, Any]) -> None:
    """The run's last file: from now on readers accept the folder. The training state
    goes after it (a marker that cannot be written leaves the run resumable; a state a
    kill left beside the marker is deleted when the run is next reused)."""
    record = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **summary}
    atomic_write_text(path / RUN_COMPLETE_FILE, json.dumps(record, indent=2) + "\n")
    (path / TRAIN_STATE_FILE).unlink(missing_ok=True)


def require_complete(path: str | os.PathLike[str], action: str) -> None:
    """Readers' gate: an unfinished run is an error that says how to finish it."""
    folder = inspect_folder(path)
    if folder.kind == "incomplete":
        raise ConfigError(
            f"cannot {action} {folder.path}: it holds {folder.describe()}; finish it with "
            f"`e2vpt train --resume --output-dir {folder.path}` (or train it again)"
        )


def fresh_folder(base: str | os.PathLike[str]) -> Path:
    """``base`` if it is free, else ``base-2``, ``base-3`` …: a new run never lands in
    another's folder."""
    base = Path(base)
    candidate, n = base, 1
    while inspect_folder(candidate).kind not in ("absent", "empty"):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def readable_name(text: str, limit: int = 80) -> str:
    """A short, file-name-safe form of a data spec or method name (its last characters)."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-.")[-limit:].strip("-.") or "run"
