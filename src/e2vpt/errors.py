"""Errors users can fix: the message says what is wrong and how to fix it. One base,
:class:`E2VPTError`, so the command line catches every one of them in one place and no
user error escapes as a traceback (a leaf: imports nothing of e2vpt's)."""

from __future__ import annotations


class E2VPTError(Exception):
    """Base of every error e2vpt raises for a user's input, files or run."""


class ConfigError(E2VPTError, ValueError):
    """A configuration value is invalid; the message says which and how to fix it."""


class DataError(E2VPTError, ValueError):
    """A dataset folder, split file or image is missing, unreadable or inconsistent."""


class CheckpointError(E2VPTError, RuntimeError):
    """A checkpoint is missing, corrupt, or does not fit the backbone it is loaded onto."""


class BackboneError(E2VPTError, RuntimeError):
    """A backbone could not be created or its weights could not be loaded."""


class SweepError(E2VPTError, RuntimeError):
    """The sweep cannot go on (e.g. every grid point diverged)."""


class DivergedError(E2VPTError, FloatingPointError):
    """Training produced a non-finite loss (a sweep records it as a result)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run; the message says what was kept and how to go on."""


class ExportError(E2VPTError, RuntimeError):
    """A model could not be exported, or the exported file does not reproduce it."""
