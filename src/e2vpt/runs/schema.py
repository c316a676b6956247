"""A run folder's files are input: a user may have edited them, another tool written
them, a disk damaged them. This module is the one place that reads them as text and
says what they may hold, before anything is built from them (no tensor is allocated
from an unchecked number):

* every file is read with a size bound (``MAX_RECORD_BYTES`` for JSON records,
  ``MAX_CONFIG_BYTES`` for ``train_config.yaml``) *before* it is parsed, must be UTF-8,
  and may nest lists and mappings ``MAX_NESTING`` levels deep and hold ``MAX_VALUES``
  values at most (YAML aliases counted each time they are used);
* ``adapter.json`` (:func:`check_adapter_config`) is typed field by field — integers
  are no booleans, names are strings, ``num_classes`` is 1 … ``MAX_CLASSES``, the class
  names are exactly ``num_classes`` strings, ``input_norm`` is 3 finite means and 3
  finite positive standard deviations, ``pruning`` and the tensor shapes are what
  ``e2vpt.save`` writes — and its ``method_config`` is checked by the method's own
  config class (types and the bounds declared on its fields, e.g. prompt tokens ≤
  ``MAX_PROMPT_TOKENS``, see :mod:`e2vpt.layers.settings`).

Every error is one line naming the file, the field and what it may be.
Light: no torch (the command line reads run folders first)."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from e2vpt.errors import CheckpointError, ConfigError, E2VPTError
from e2vpt.layers.settings import MAX_CLASSES, MAX_LAYER_WIDTH, MAX_PROMPT_TOKENS, PRUNE_MODES
from e2vpt.settings import shown

if TYPE_CHECKING:
    from e2vpt.methods.base import MethodConfig

CHECKPOINT_FORMAT = 1  # adapter.json's format_version: what this e2vpt writes and reads
MAX_RECORD_BYTES = 32 * 2**20  # a JSON record (adapter.json: a few KiB)
MAX_CONFIG_BYTES = 2**20  # train_config.yaml (about 1 KiB)
MAX_NESTING = 16  # lists / mappings inside each other (adapter.json: 4)
MAX_VALUES = 1_000_000  # values in one file
MAX_TEXT = 4096  # characters of one name (a backbone, a class, a path)
MAX_DIMS = 8  # dimensions of a stored tensor
# the fields every adapter.json has had since the first release
REQUIRED_ADAPTER_FIELDS = ("method", "method_config", "num_classes", "backbone")
_SHA256 = re.compile("[0-9a-f]{64}")
FIX = "the file was changed since e2vpt wrote it: restore it, or train the run again"

ErrorType = Callable[[str], E2VPTError]


# -- reading -------------------------------------------------------------------------
def read_text(path: Path, limit: int, error: ErrorType = CheckpointError) -> str:
    """A regular file's text, refused before it is read when larger than ``limit``
    bytes, and when it is not UTF-8."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path} is not a regular file")
        if info.st_size > limit:
            raise error(f"{path} is {info.st_size:,} bytes, more than the {limit:,} e2vpt reads")
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as err:
        raise error(f"cannot read {path}: {err.strerror or err}") from None
    if len(data) > limit:  # it grew while read
        raise error(f"{path} is more than the {limit:,} bytes e2vpt reads")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        byte = data[err.start]
        raise error(
            f"{path} is not UTF-8 text (byte 0x{byte:02x} at offset {err.start}); {FIX}"
        ) from None


def read_json(path: Path, error: ErrorType = CheckpointError, limit: int = MAX_RECORD_BYTES) -> Any:
    """A JSON file's value, read within the bounds above."""
    text = read_text(path, limit, error)
    try:
        value = json.loads(text)
    except RecursionError:
        raise error(f"{path} nests lists or mappings more than {MAX_NESTING} deep; {FIX}") from None
    except ValueError as err:  # JSONDecodeError, or an integer of thousands of digits
        raise error(f"{path} is corrupt (not valid JSON: {err})") from None
    check_nesting(value, path, error)
    return value


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file holding a mapping of field names (``train_config.yaml``, a
    ``--config`` file), read within the bounds above; an empty file is ``{}``."""
    text = read_text(path, MAX_CONFIG_BYTES, ConfigError)
    try:
        values = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(
            f"{path} is not valid YAML ({where}{err.problem or err.context})"
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML ({str(err).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"{path} nests lists or mappings more than {MAX_NESTING} deep") from None
    except ValueError as err:  # e.g. an integer of thousands of digits
        raise ConfigError(f"{path} holds a value YAML cannot read ({err})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {shown(values)}")
    for key in values:
        if not isinstance(key, str):
            raise ConfigError(f"{path}: the config keys must be names, got {shown(key)}")
    check_nesting(values, path, ConfigError)
    return values


def check_nesting(value: Any, path: Path, error: ErrorType = CheckpointError) -> None:
    """At most ``MAX_NESTING`` levels and ``MAX_VALUES`` values (walked without
    recursion; a value that appears twice, a YAML alias, is counted twice)."""
    stack, seen = [(value, 1)], 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise error(f"{path} holds more than {MAX_VALUES:,} values; {FIX}")
        if not isinstance(item, dict | list):
            continue
        if depth > MAX_NESTING:
            raise error(f"{path} nests lists or mappings more than {MAX_NESTING} deep; {FIX}")
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children)


# -- adapter.json ----------------------------------------------------------------------
class _Fields:
    """The checks of one file's fields; each error names the file and the field."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, field: str, wanted: str, value: Any) -> CheckpointError:
        return CheckpointError(
            f"{self.path} is invalid: {field} must be {wanted}, got {shown(value)}; {FIX}"
        )

    def integer(self, value: Any, field: str, low: int, high: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise self.error(field, f"an integer from {low} to {high}", value)
        return value

    def text(self, value: Any, field: str, nullable: bool = True, limit: int = MAX_TEXT) -> None:
        if value is None and nullable:
            return
        if not isinstance(value, str) or len(value) > limit:
            kind = "a string or null" if nullable else "a string"
            raise self.error(field, f"{kind} of at most {limit} characters", value)

    def flag(self, value: Any, field: str) -> None:
        if not isinstance(value, bool):
            raise self.error(field, "true or false", value)

    def items(self, value: Any, field: str, most: int) -> list[Any]:
        if not isinstance(value, list) or len(value) > most:
            raise self.error(field, f"a list of at most {most} values", value)
        return value

    def mapping(self, value: Any, field: str, most: int = MAX_VALUES) -> dict[str, Any]:
        if not isinstance(value, dict) or len(value) > most:
            raise self.error(field, f"a mapping of at most {most} entries, or null", value)
        return value


def check_adapter_config(meta: Any, path: Path) -> dict[str, Any]:
    """``meta``, read from ``path`` (an ``adapter.json``), if it is what ``e2vpt.save``
    writes (the fields added since the first release may be absent); else a
    :class:`CheckpointError` naming the field."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} is corrupt or from another tool: not a JSON object")
    for key in REQUIRED_ADAPTER_FIELDS:
        if key not in meta:
            raise CheckpointError(f"{path} is corrupt or from another tool: no {key!r} field")
    check = _Fields(path)
    version = check.integer(meta.get("format_version", 1), "format_version", 1, 2**31)
    if version > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} was written by a newer e2vpt (checkpoint format {version}; this one "
            f"reads format {CHECKPOINT_FORMAT}): upgrade e2vpt to load it"
        )
    for field in ("backbone", "backbone_weights"):
        check.text(meta.get(field), field)
    check.text(meta.get("backbone_fingerprint"), "backbone_fingerprint", limit=128)
    check.text(meta.get("global_pool"), "global_pool", limit=64)
    check.text(meta["method"], "method", nullable=False, limit=64)
    _check_signature(check, meta.get("backbone_signature"))
    classes = check.integer(meta["num_classes"], "num_classes", 1, MAX_CLASSES)
    _check_input_norm(check, meta.get("input_norm"))
    _check_class_names(check, meta.get("class_names"), classes)
    if "masks_active" in meta:
        check.flag(meta["masks_active"], "masks_active")
    _check_pruning(check, meta.get("pruning"))
    _check_tensors(check, meta.get("tensors"))
    digest = meta.get("sha256")
    if digest is not None and not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
        raise check.error("sha256", "64 hexadecimal digits (the tensor file's SHA-256)", digest)
    method_config_of(meta, path)  # the method's options, checked by its config class
    return meta


def method_config_of(meta: dict[str, Any], path: Path) -> MethodConfig:
    """The method config ``meta`` records, checked by the method's own config class;
    options added to a method since the run was saved take the values such runs had."""
    from e2vpt.methods.base import get_method, method_config

    options = meta["method_config"]
    try:
        spec = get_method(meta["method"])
        if not isinstance(options, dict):
            raise ConfigError(
                f"method_config must be a mapping of option names to values, got {shown(options)}"
            )
        return method_config(meta["method"], spec.with_legacy_options(options))
    except ConfigError as err:
        raise CheckpointError(f"{path} is invalid: {err}; {FIX}") from None


def _check_signature(check: _Fields, signature: Any) -> None:
    """The backbone's architecture facts: names → numbers, strings or lists of them."""
    if signature is None:
        return
    for key, value in check.mapping(signature, "backbone_signature", 64).items():
        field = f"backbone_signature.{key}"
        check.text(key, "a backbone_signature key", nullable=False, limit=64)
        values = check.items(value, field, 64) if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, str):
                check.text(item, field)
            elif item is not None and not isinstance(item, int | float):
                raise check.error(field, "a number, a string or a list of them", value)


def _check_input_norm(check: _Fields, norm: Any) -> None:
    """Null, or [mean, std]: three finite numbers each, every std > 0."""
    if norm is None:
        return
    wanted = "null or [mean, std] of 3 finite numbers each, every std > 0"
    if not isinstance(norm, list) or len(norm) != 2:
        raise check.error("input_norm", wanted, norm)
    for name, values in zip(("mean", "std"), norm, strict=True):
        if not isinstance(values, list) or len(values) != 3:
            raise check.error("input_norm", wanted, norm)
        for value in values:
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not abs(value) < float("inf") or (name == "std" and value <= 0):
                each = "3 finite numbers, each > 0" if name == "std" else "3 finite numbers"
                raise check.error(f"input_norm's {name}", each, values)


def _check_class_names(check: _Fields, names: Any, classes: int) -> None:
    if names is None:
        return
    wanted = f"a list of num_classes ({classes}) strings, or null"
    if not isinstance(names, list) or len(names) != classes:
        raise check.error("class_names", wanted, names)
    for name in names:
        check.text(name, "class_names", nullable=False)


def _check_pruning(check: _Fields, pruning: Any) -> None:
    """Null, or what a pruned checkpoint records of its structure."""
    if pruning is None:
        return
    record = check.mapping(pruning, "pruning", 16)
    for key in ("original_tokens", "kept_tokens", "kept_segments_per_token"):
        if key not in record:
            raise check.error("pruning", f"null or a record with {key!r}", pruning)
    if "mode" in record and record["mode"] not in PRUNE_MODES:
        raise check.error("pruning.mode", " or ".join(PRUNE_MODES), record["mode"])
    original = check.integer(
        record["original_tokens"], "pruning.original_tokens", 1, MAX_PROMPT_TOKENS
    )
    kept = check.items(record["kept_tokens"], "pruning.kept_tokens", original)
    for token in kept:
        check.integer(token, "pruning.kept_tokens", 0, original - 1)
    segments = check.items(
        record["kept_segments_per_token"], "pruning.kept_segments_per_token", original
    )
    if len(segments) != len(kept):
        raise check.error(
            "pruning.kept_segments_per_token", f"{len(kept)} counts (one per kept token)", segments
        )
    for count in segments:
        check.integer(count, "pruning.kept_segments_per_token", 0, MAX_LAYER_WIDTH)
    if "stored_prompt_values" in record:
        check.integer(record["stored_prompt_values"], "pruning.stored_prompt_values", 0, 2**40)


def _check_tensors(check: _Fields, tensors: Any) -> None:
    """Null or absent (older runs), or tensor name → shape."""
    if tensors is None:
        return
    for name, shape in check.mapping(tensors, "tensors").items():
        check.text(name, "a tensors key", nullable=False)
        for size in check.items(shape, f"tensors.{name}", MAX_DIMS):
            check.integer(size, f"tensors.{name}", 0, 2**40)


# -- the other records -------------------------------------------------------------------
def fits_record(data: dict[str, Any], kinds: dict[str, tuple[type, ...]]) -> bool:
    """Whether ``data`` (a JSON record e2vpt keeps, e.g. a pruning point's) has each
    field of ``kinds`` with one of its types — ``true`` is no number, a number is
    finite. A record that does not fit is done again, as an absent one."""
    for field, allowed in kinds.items():
        if field not in data:
            return False
        value = data[field]
        if isinstance(value, bool) and bool not in allowed:
            return False
        if isinstance(value, float) and not abs(value) < float("inf"):
            return False
        if not isinstance(value, allowed):
            return False
    return True
