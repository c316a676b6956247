"""The one channel through which the library tells a user something that is not an
error (a split it held out, a file it skipped, an assumption it made): the ``e2vpt``
logger. By default a notice is one line on stderr, ``e2vpt: …``, said once per
process; the command line renders the setting names in it as its flags, the server
sends it to its own log, and a Python user configures it like any logger
(``logging.getLogger("e2vpt")``). A leaf: imports nothing of e2vpt's."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

LOGGER = logging.getLogger("e2vpt")
_said: set[str] = set()


class _StderrNotices(logging.Handler):
    """``e2vpt: <notice>`` on whatever ``sys.stderr`` is when the notice is said (a
    test's captured stream, a redirected one)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.render: Callable[[str], str] = str

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"e2vpt: {self.render(record.getMessage())}", file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - a notice must never stop the work
            self.handleError(record)


DEFAULT_HANDLER = _StderrNotices()
LOGGER.addHandler(DEFAULT_HANDLER)
LOGGER.setLevel(logging.INFO)
LOGGER.propagate = False


def note(message: str, quiet: bool = False, once: bool = True) -> None:
    """Say ``message`` once per process (a sweep reloading a task does not repeat a
    warning about its data); ``once=False``: every time (a summary, a step's progress);
    ``quiet``: not at all (a torchrun rank other than 0)."""
    if quiet or (once and message in _said):
        return
    _said.add(message)
    LOGGER.disabled = False  # a library's logging.config (uvicorn's) must not silence it
    LOGGER.info(message)


def render_notices(render: Callable[[str], str]) -> Callable[[str], str]:
    """How the default handler writes a notice's setting names (the CLI: as flags);
    returns the previous rendering, to put back."""
    previous, DEFAULT_HANDLER.render = DEFAULT_HANDLER.render, render
    return previous
