"""Settings dataclasses ↔ command-line flags: the one place a field name becomes a flag
name, a field's help text becomes its ``--help`` line, and a parser that takes no
abbreviations and names the closest real flag when given a wrong one.

Imports nothing heavy: every command's parser is built before torch is imported."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from typing import Any, NoReturn

from e2vpt.settings import help_of


def flag_name(field: str) -> str:
    """``base_lr`` → ``--base-lr``: the only place a setting's name becomes a flag."""
    return "--" + field.replace("_", "-")


class StrictParser(argparse.ArgumentParser):
    """No abbreviated flags (``--epoch`` is not ``--epochs``); an unknown flag is one line
    that names the closest real ones; every error is one line, never the usage block."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """A command's parser reports what it does not know itself, so the candidates it
        names are that command's flags."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(self._unknown(extras))
        return parsed, extras

    def _unknown(self, extras: list[str]) -> str:
        flag = next((x for x in extras if x.startswith("-")), extras[0])
        if not flag.startswith("-"):
            return f"unexpected argument {flag!r}; see `{self.prog} --help`"
        known = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
        close = closest_flags(flag.split("=")[0], known)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return f"unknown flag {flag}{hint} (see `{self.prog} --help`)"

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def closest_flags(flag: str, known: Sequence[str], most: int = 3) -> list[str]:
    """Flags that start with or contain what was typed, then the nearest by spelling."""
    stem = flag.lstrip("-")
    contains = [k for k in known if stem and stem in k.lstrip("-")]
    near = difflib.get_close_matches(flag, known, n=most, cutoff=0.75)
    return list(dict.fromkeys([*near, *contains]))[:most]


def _base_type(annotation: Any) -> Any:
    """int | None → int; dict[...] → dict."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    return origin or annotation


def _item_type(annotation: Any) -> Any:
    """list[float] | None → float."""
    base = annotation
    origin = typing.get_origin(base)
    if origin in (typing.Union, types.UnionType):
        base = next(a for a in typing.get_args(base) if a is not type(None))
    args = typing.get_args(base)
    return args[0] if args else str


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def add_dataclass_flags(
    parser: argparse.ArgumentParser | Any,
    cls: type,
    skip: set[str] | frozenset[str] = frozenset(),
    help_prefix: str = "",
    help_overrides: dict[str, str] | None = None,
    suppress_defaults: bool = True,
) -> None:
    """One flag per field, its help from the field's ``help`` metadata.

    ``suppress_defaults``: a flag not given leaves no attribute, so YAML and the
    dataclass's own defaults fill it (train/sweep); otherwise the field's default."""
    hints = typing.get_type_hints(cls)
    helps = help_of(cls) | (help_overrides or {})
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        default = field_default(f)
        described = helps.get(f.name, f.name).replace("%", "%%")
        text = f"{help_prefix}{described}"
        if default is not None and default != []:
            text += f" (default: {_shown(default)})"
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "default": argparse.SUPPRESS if suppress_defaults else default,
            "help": text,
        }
        if "metavar" in f.metadata:
            kwargs["metavar"] = f.metadata["metavar"]
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        kind = _base_type(hints[f.name])
        if "parse" in f.metadata:  # a field read from a file (e.g. a peft config)
            kwargs["type"] = f.metadata["parse"]
            kwargs["help"] = f"{help_prefix}{described}"
        elif kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is list:
            kwargs["type"], kwargs["nargs"] = _item_type(hints[f.name]), "+"
        else:
            kwargs["type"] = kind
        parser.add_argument(flag_name(f.name), **kwargs)


def _shown(value: Any) -> str:
    if isinstance(value, list | tuple):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def settings_from_args(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """The settings dataclass from parsed flags (every field a flag; ``extra`` for the
    fields a command fills itself)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return cls(**{**values, **extra})
