"""Every progress bar e2vpt shows, made by one function. On a terminal it is tqdm's bar;
when stderr is not a terminal (a log file, a CI job, a captured stream) a bar would be
one endless line of carriage returns, so it becomes plain lines instead, said through the
notice channel: one at each milestone its caller marks (an epoch, a trial) and one when
it ends."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

from e2vpt.notices import note


class LineBar:
    """tqdm's interface as far as e2vpt uses it, written as whole lines: ``milestone``
    (and every ``every`` units) and the end of the bar each say ``desc: n/total unit,
    postfix (seconds)``; a bar that counted nothing says nothing."""

    def __init__(
        self,
        iterable: Iterable[Any] | None,
        desc: str,
        total: int | None,
        unit: str,
        initial: int,
        every: int | None,
    ) -> None:
        self.iterable, self.desc, self.unit, self.every = iterable, desc, unit, every
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.start = total, initial, initial
        self.postfix: dict[str, Any] = {}
        self.began = time.perf_counter()
        self.closed = False
        self.said: int | None = None  # the count the last line said

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        before, self.n = self.n, self.n + n
        if self.every and before // self.every != self.n // self.every:
            self.milestone()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def milestone(self) -> None:
        shown = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        seconds = time.perf_counter() - self.began
        note(f"{self.desc}: {shown} {self.unit}{extra} ({seconds:.0f} s)", once=False)
        self.said = self.n

    def close(self) -> None:
        """The last line, when the bar ran to its end (one stopped by an error leaves
        the error the last word)."""
        if self.closed:
            return
        self.closed = True
        finished = self.total is None or self.n >= self.total
        if finished and self.n > self.start and self.said != self.n:
            self.milestone()


Bar = tqdm | LineBar


def on_terminal() -> bool:
    """Whether stderr, where bars go, is a terminal (a bar there redraws itself)."""
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    show: bool,
    desc: str,
    total: int | None = None,
    unit: str = "it",
    initial: int = 0,
    leave: bool = True,
    every: int | None = None,
    position: int | None = None,
) -> Bar:
    """A bar over ``iterable`` (or counted by ``update``): tqdm's on a terminal, plain
    lines elsewhere (a line every ``every`` units, at each ``milestone`` and at the end),
    nothing when not ``show``."""
    if show and not on_terminal():
        return LineBar(iterable, desc, total, unit, initial, every)
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        initial=initial,
        leave=leave,
        disable=not show,
        dynamic_ncols=True,
        position=position,
    )


def milestone(bar: Bar) -> None:
    """Mark a milestone (an epoch done): a line in a log file; a terminal's bar shows it
    already."""
    if isinstance(bar, LineBar):
        bar.milestone()
