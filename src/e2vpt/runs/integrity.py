"""Is a checkpoint's tensor file the one its ``adapter.json`` was written with?
``adapter.json`` records the SHA-256 of ``adapter.safetensors``: a file that does not
match is refused. A checkpoint without the hash (written by an older e2vpt or by hand)
cannot be verified: its tensor file must still hold the tensors, with the shapes,
that ``adapter.json`` records, and ``e2vpt verify --add-hash RUN`` records the hash of
the file as it is, once you trust it. Torch-free: the safetensors header is read as the
format defines it (8 bytes of length, then JSON)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2vpt.errors import CheckpointError
from e2vpt.files import atomic_write_text
from e2vpt.runs.folder import require_complete
from e2vpt.runs.names import ADAPTER_CONFIG_FILE, ADAPTER_TENSORS_FILE, RESULTS_FILE
from e2vpt.runs.records import has_train_config, read_adapter_config, read_results
from e2vpt.runs.schema import MAX_RECORD_BYTES

HASH_FIELD = "sha256"


def tensor_bytes_hash(blob: bytes) -> str:
    """The SHA-256 that ``adapter.json`` records of a tensor file about to be written."""
    return hashlib.sha256(blob).hexdigest()


def tensor_file_hash(path: Path) -> str:
    """The SHA-256 of a file, read in chunks (the same as :func:`tensor_bytes_hash`)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def stored_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name → shape, from a safetensors file's header (no tensor is read)."""
    corrupt = f"{path} is corrupt (not a safetensors file)"
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if size < 8 or length > min(size - 8, MAX_RECORD_BYTES):
                raise CheckpointError(corrupt)
            header = json.loads(handle.read(length).decode("utf-8"))
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from None
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested without end
        raise CheckpointError(corrupt) from None
    if not isinstance(header, dict):
        raise CheckpointError(corrupt)
    shapes = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("shape"), list):
            raise CheckpointError(corrupt)
        shapes[name] = entry["shape"]
    return shapes


def check_tensor_file(directory: Path, meta: dict[str, Any]) -> bool:
    """The tensor file is the one ``meta`` (the checked ``adapter.json``) was saved
    with: it holds the tensors ``meta`` records, and matches the recorded hash. True
    when the hash proved it; False when ``meta`` records no hash (an older run), so
    only the tensor names and shapes could be checked."""
    path = directory / ADAPTER_TENSORS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete")
    recorded = meta.get("tensors")
    if recorded is not None:
        shapes = stored_shapes(path)
        if shapes != recorded:
            differ = sorted(set(shapes) ^ set(recorded)) or sorted(
                name for name in shapes if shapes[name] != recorded[name]
            )
            raise CheckpointError(
                f"{path} does not hold the tensors {ADAPTER_CONFIG_FILE} records (they differ "
                f"in {', '.join(differ[:3])}): it is from another save or another run; "
                "put the run's own file back, or train the run again"
            )
    if not meta.get(HASH_FIELD):
        return False
    if tensor_file_hash(path) != meta[HASH_FIELD]:
        raise CheckpointError(
            f"{path} does not match the hash in {ADAPTER_CONFIG_FILE}: the file is "
            "corrupt or from another save; re-save or re-train"
        )
    return True


def unverified_notice(directory: Path) -> str:
    """What loading a checkpoint without a recorded hash says."""
    return (
        f"{directory / ADAPTER_CONFIG_FILE} records no hash of {ADAPTER_TENSORS_FILE} "
        "(an older run): the tensors cannot be verified; once you trust the folder, "
        f"`e2vpt verify --add-hash {directory}` records one"
    )


@dataclass(frozen=True)
class Verification:
    run: Path
    verified: bool  # the tensor file matches a recorded hash
    hash_added: bool
    message: str


def verify_run(run_dir: str | os.PathLike[str], add_hash: bool = False) -> Verification:
    """Check a finished run folder's files: ``adapter.json`` (typed and bounded),
    ``train_config.yaml`` and ``results.json`` where present, and the tensor file
    against what ``adapter.json`` records. ``add_hash``: a checkpoint without a hash
    gets the hash of its tensor file as it is now (``adapter.json`` rewritten
    atomically, nothing else changed); one with a hash is only checked."""
    directory = Path(run_dir)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a folder; give a run folder")
    require_complete(directory, "verify")
    meta = read_adapter_config(directory)
    if has_train_config(directory):
        from e2vpt.training.config import TrainConfig

        TrainConfig.from_run_folder(directory)
    if (directory / RESULTS_FILE).exists():
        read_results(directory)
    if check_tensor_file(directory, meta):
        return Verification(directory, True, False, f"{directory}: verified")
    if not add_hash:
        message = (
            f"{directory}: its files are valid, but {ADAPTER_CONFIG_FILE} records no hash of "
            f"{ADAPTER_TENSORS_FILE} (an older run), so the tensors cannot be verified"
        )
        return Verification(directory, False, False, message)
    digest = tensor_file_hash(directory / ADAPTER_TENSORS_FILE)
    text = json.dumps({**meta, HASH_FIELD: digest}, indent=2) + "\n"
    atomic_write_text(directory / ADAPTER_CONFIG_FILE, text)
    message = f"{directory}: recorded the hash of {ADAPTER_TENSORS_FILE} ({digest[:12]}…)"
    return Verification(directory, True, True, message)
