"""Sweeps (the papers' grid → select → seeds protocol) and reports over them.

Importing the package imports no torch: each name below comes from its module on first
access, so :mod:`e2vpt.sweeps.settings` stays cheap to import."""

from __future__ import annotations

from typing import TYPE_CHECKING

from e2vpt.lazy import lazy_names

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


__getattr__, __dir__ = lazy_names("e2vpt.sweeps", _HOMES, globals())


__all__ = ["SweepError", "SweepSettings", "run_sweep"]
