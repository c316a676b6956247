"""Sweeps (the papers' grid → select → seeds protocol) and reports over them."""

from e2vpt.sweeps.protocol import SweepError, SweepSettings, run_sweep

__all__ = ["SweepError", "SweepSettings", "run_sweep"]
