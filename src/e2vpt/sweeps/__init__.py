"""Sweeps (the papers' grid → select → seeds protocol) and reports over them.

Importing the package imports no torch: each name below comes from its module on first
access, so :mod:`e2vpt.sweeps.settings` stays cheap to import."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from e2vpt.errors import SweepError
    from e2vpt.sweeps.protocol import run_sweep
    from e2vpt.sweeps.settings import SweepSettings

# name → the module that is its home
_HOMES = {
    "SweepError": "e2vpt.errors",
    "SweepSettings": "e2vpt.sweeps.settings",
    "run_sweep": "e2vpt.sweeps.protocol",
}


def __getattr__(name: str) -> object:
    """``from e2vpt.sweeps import run_sweep`` imports torch only then."""
    if name not in _HOMES:
        raise AttributeError(f"module 'e2vpt.sweeps' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


__all__ = ["SweepError", "SweepSettings", "run_sweep"]
