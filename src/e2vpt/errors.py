"""Errors users can fix: the message says what is wrong and how to fix it. One base,
:class:`E2VPTError`, so the command line catches every one of them in one place and no
user error escapes as a traceback (a leaf: imports nothing of e2vpt's)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any


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


class DiskFullError(E2VPTError, OSError):
    """A file could not be written: its disk is full (or the user's quota is). Nothing
    half-written is left; the message names the folder."""


def exit_code_of(
    main: Callable[[], int],
    name: str,
    interrupted: str = "",
    prefer_error_message: bool = False,
    render: Callable[[str], str] = str,
) -> int:
    """Run a command's or a script's ``main`` the one way the command line runs every
    command: a user error is one line on stderr (exit 2), Ctrl-C or SIGTERM (``kill``, a
    scheduler's preemption, torchrun stopping its workers) says what was kept (exit 130),
    never a traceback; bugs keep theirs.

    ``interrupted``: what was kept, said after an interrupt; ``prefer_error_message``:
    an :class:`Interrupted` raised with a message of its own says it instead (training
    knows which epoch is saved). ``render`` rewrites an error's text for its reader (the
    command line names flags where the library names settings)."""
    previous = _stop_on_sigterm()
    try:
        return main()
    except E2VPTError as err:
        print(f"{name}: error: {render(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        own = str(err) if prefer_error_message and isinstance(err, Interrupted) else ""
        said = render(own) if own else interrupted
        print(f"\n{name}: interrupted{'; ' + said if said else ''}", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stop_on_sigterm() -> Any:
    """SIGTERM stops a command like Ctrl-C: cleanly, with what was kept and how to go on
    (None where no handler can be set: not the main thread)."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, interrupt)
    except ValueError:
        return None
