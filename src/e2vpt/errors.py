"""Errors users can fix: the message says what is wrong and how to fix it. One base,
:class:`E2VPTError`, so the command line catches every one of them in one place and no
user error escapes as a traceback (a leaf: imports nothing of e2vpt's)."""

from __future__ import annotations

import sys
from collections.abc import Callable


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


def exit_code_of(main: Callable[[], int], name: str, interrupted: str = "") -> int:
    """Run a script's ``main`` the way the command line runs a command: a user error is
    one line on stderr (exit 2) and Ctrl-C says what was kept (exit 130), never a
    traceback."""
    try:
        return main()
    except E2VPTError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted{'; ' + interrupted if interrupted else ''}", file=sys.stderr)
        return 130
