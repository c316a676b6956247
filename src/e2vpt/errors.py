"""Errors users can fix: the message says what is wrong and how to fix it (a leaf:
imports nothing of e2vpt's)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and how to fix it."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run; the message says what was kept and how to go on."""
