"""Fields of the settings dataclasses (run config, method options, command settings):
a default and a sentence saying what the field does, kept together on the field
(``dataclasses.field`` metadata), so ``--help``, ``e2vpt info`` and the docs read the same
text. A leaf: imports nothing of e2vpt's."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any


def setting(default: Any = dataclasses.MISSING, help: str = "", **metadata: Any) -> Any:
    """``epochs: int = setting(100, "training epochs")``. A mutable default (list,
    dict) is copied for every instance. Other metadata: ``choices``, ``metavar``,
    ``parse`` (a function reading the flag's text), ``cli=False`` (no flag)."""
    meta = {"help": help, **metadata}
    if isinstance(default, list | dict | set):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def help_of(cls: type) -> dict[str, str]:
    """Field name → its help sentence, for every field of a settings dataclass."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(cls) if f.metadata.get("help")}
