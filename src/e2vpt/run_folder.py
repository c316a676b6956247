"""Moved to :mod:`e2vpt.runs`; re-exported while code written against this name remains."""

from e2vpt.runs import *  # noqa: F403
