"""Fields of the settings dataclasses (run config, method options, command settings):
a default and a sentence saying what the field does, kept together on the field
(``dataclasses.field`` metadata), so ``--help``, ``e2vpt info`` and the docs read the same
text; and the check that values read from a file (YAML, a run folder's JSON) have the
types the fields declare. A leaf: imports nothing of e2vpt's but errors."""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from e2vpt.errors import ConfigError


def setting(default: Any = dataclasses.MISSING, help: str = "", **metadata: Any) -> Any:
    """``epochs: int = setting(100, "training epochs")``. A mutable default (list,
    dict) is copied for every instance. Other metadata: ``choices``, ``metavar``,
    ``parse`` (a function reading the flag's text), ``cli=False`` (no flag),
    ``maximum`` (the largest value :func:`check_values` accepts)."""
    meta = {"help": help, **metadata}
    if isinstance(default, list | dict | set):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def help_of(cls: type) -> dict[str, str]:
    """Field name → its help sentence, for every field of a settings dataclass."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(cls) if f.metadata.get("help")}


@functools.cache
def _field_types(cls: type) -> dict[str, tuple[Any, Any]]:
    """Field name → (its resolved type, its ``maximum`` or None)."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f.metadata.get("maximum")) for f in dataclasses.fields(cls)}


def check_values(cls: type, values: Mapping[str, Any], owner: str = "") -> None:
    """Every value in ``values`` (field name → value; names that are no field of ``cls``
    are left to the caller) has the type its field declares — ``true`` is no integer,
    ``2.5`` no integer either, ``"2"`` no number, a number is finite — and is at most
    the field's ``maximum``. The error names ``owner`` (``e2vpt: ``) and the field."""
    types_of = _field_types(cls)
    for name, value in values.items():
        if name not in types_of:
            continue
        expected, maximum = types_of[name]
        if not _fits(value, expected):
            raise ConfigError(
                f"{owner}{name} must be {_describe(expected)}, got {shown(value)}{_hint(value)}"
            )
        if maximum is not None and isinstance(value, int | float) and value > maximum:
            raise ConfigError(f"{owner}{name} must be <= {maximum}, got {shown(value)}")


def _fits(value: Any, expected: Any) -> bool:
    origin = typing.get_origin(expected)
    if expected is Any:
        return True
    if expected is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, option) for option in typing.get_args(expected))
    if origin is not None:  # dict[str, Any], list[float] …: the container's type
        return isinstance(value, origin) and not isinstance(value, str)
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )
    return isinstance(value, expected)


_WORDS = {
    bool: "true or false",
    int: "an integer",
    float: "a finite number",
    str: "a string",
    dict: "a mapping",
    list: "a list",
    type(None): "null",
}


def _describe(expected: Any) -> str:
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(expected))
    kind = typing.get_origin(expected) or expected
    return _WORDS.get(kind, getattr(kind, "__name__", str(kind)))


def shown(value: Any, limit: int = 60) -> str:
    """A value as an error message shows it: its repr, cut short, with its kind when
    the repr alone would mislead (``True``, ``'2'``)."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    kind = type(value).__name__
    return text if kind in ("int", "float", "NoneType") else f"{text} ({kind})"


def _hint(value: Any) -> str:
    """YAML 1.1 reads ``1e-4`` as text: say how to write the number."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return ""
        if math.isfinite(number):
            return f"; write it as a number (YAML reads {value} as text, {number!r} as a number)"
    return ""
