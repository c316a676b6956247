"""Training curves: the one home of what a run logs beside metrics.csv. The epoch loop
reports through a :class:`Tracker`: every update's loss and lr, every epoch's metrics,
the final evaluation. The run's own tracker writes TensorBoard event files into
``<run>/tb/`` (``tensorboard --logdir runs`` shows every run); a caller may add one of
its own (``TrainHooks.tracker``). Rank 0 alone logs under torchrun.

Every value is logged at the run's update count, so a resumed run continues the same
curves: its writer purges whatever the interrupted session logged after the saved state
(TensorBoard's ``purge_step``), and every tag reads as one rising sequence of steps.

Curves are a side channel: a writer that fails (a full disk) says so once and stops,
the run goes on."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from e2vpt.notices import note
from e2vpt.runs.names import TENSORBOARD_DIR

# a metrics row's fields and the tag each is logged under, once an epoch
EPOCH_TAGS = {
    "train_loss": "epoch/train_loss",
    "train_top1": "epoch/train_top1",
    "val_top1": "epoch/val_top1",
    "lr": "epoch/lr",
    "epoch": "epoch/epoch",
    "epoch_seconds": "epoch/seconds",
}
UPDATE_LOSS_TAG = "train/loss"  # each update's mean loss (rank 0's share of the batch)
UPDATE_LR_TAG = "train/lr"  # the lr that update stepped with
INSTALL_HINT = "pip install 'e2vpt[tensorboard]'"


class Tracker:
    """Where a run's curves go: a subclass overrides ``log`` (and ``close``). This base
    keeps nothing: tracking off."""

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        """``scalars`` (tag → value) at update ``step``."""

    def close(self) -> None:
        """Everything logged is on disk."""

    @property
    def active(self) -> bool:
        """Whether anything is kept (the loop skips collecting for an inactive one)."""
        return type(self).log is not Tracker.log

    def log_updates(self, first: int, losses: Sequence[float], lrs: Sequence[float]) -> None:
        """Updates ``first``, ``first + 1`` …: each one's loss and lr."""
        for offset, (loss, lr) in enumerate(zip(losses, lrs, strict=True)):
            self.log(first + offset, {UPDATE_LOSS_TAG: loss, UPDATE_LR_TAG: lr})

    def log_epoch(self, step: int, row: Mapping[str, Any]) -> None:
        """An epoch's metrics row, at the update that ended it."""
        scalars = {tag: float(row[k]) for k, tag in EPOCH_TAGS.items() if row.get(k) is not None}
        self.log(step, scalars)


class Trackers(Tracker):
    """Several trackers as one; closing it again does nothing."""

    def __init__(self, trackers: Sequence[Tracker]) -> None:
        self.trackers = [t for t in trackers if t.active]

    @property
    def active(self) -> bool:
        return bool(self.trackers)

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        for tracker in self.trackers:
            tracker.log(step, scalars)

    def close(self) -> None:
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close()


class TensorBoardTracker(Tracker):
    """Event files in ``log_dir``; what an earlier session logged at ``purge_step`` or
    later (after the state this session resumed from) is dropped by readers."""

    def __init__(self, log_dir: Path, purge_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir.mkdir(parents=True, exist_ok=True)
        _after_earlier_files(log_dir)
        _quiet_writer_threads()
        self.log_dir = log_dir
        self.writer: Any = SummaryWriter(str(log_dir), purge_step=purge_step)

    @property
    def active(self) -> bool:
        return self.writer is not None

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        if self.writer is None:
            return
        try:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)
        except OSError as err:
            self._stop(err)

    def close(self) -> None:
        if self.writer is None:
            return
        try:
            self.writer.close()
        except OSError as err:
            self._stop(err)
        self.writer = None

    def _stop(self, err: OSError) -> None:
        note(f"training curves in {self.log_dir} stopped: {err}")
        writer, self.writer = self.writer, None
        with contextlib.suppress(OSError):
            writer.close()


def open_tracker(
    out_dir: Path,
    enabled: bool,
    is_main: bool,
    first_update: int,
    extra: Tracker | None = None,
) -> Tracker:
    """The run's tracker, its next update ``first_update``: TensorBoard's in
    ``out_dir/tb`` when ``enabled`` (the ``tensorboard`` setting) and installed, plus the
    caller's ``extra``; on rank 0 only (``is_main``); a no-op otherwise."""
    if not is_main:
        return Tracker()
    trackers: list[Tracker] = [] if extra is None else [extra]
    if enabled and tensorboard_installed():
        trackers.insert(0, TensorBoardTracker(out_dir / TENSORBOARD_DIR, first_update))
    return Trackers(trackers)


def write_curves(
    folder: Path, enabled: bool, curves: Mapping[str, Sequence[tuple[int, float]]]
) -> None:
    """Curves that are no run's (a pruning search's accuracy over the tokens kept: tag →
    (step, value) points) into ``folder/tb``, written afresh: readers drop an earlier
    writing of them."""
    tracker = open_tracker(folder, enabled, is_main=True, first_update=0)
    try:
        for tag, points in curves.items():
            for step, value in sorted(points):
                tracker.log(step, {tag: value})
    finally:
        tracker.close()


def tensorboard_installed() -> bool:
    """Whether TensorBoard can be written; when not, a notice says how to install it."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        note(
            f"the `tensorboard` package is not installed, so no training curves are written; "
            f"install it with {INSTALL_HINT} (turning `tensorboard` off silences this)"
        )
        return False
    return True


def _quiet_writer_threads() -> None:
    """TensorBoard writes from a thread of its own; a write that fails there fails again
    at this side's next call (and is said as a notice), so Python's printing of the
    thread's traceback is left out, for TensorBoard's threads and OSErrors only."""
    previous = threading.excepthook
    if getattr(previous, "e2vpt_quiet", False):
        return

    def hook(args: Any) -> None:
        module = type(args.thread).__module__ if args.thread is not None else ""
        if module.startswith("tensorboard.") and issubclass(args.exc_type, OSError):
            return
        previous(args)

    hook.e2vpt_quiet = True  # type: ignore[attr-defined]
    threading.excepthook = hook


_EVENT_TIME = re.compile(r"^events\.out\.tfevents\.(\d+)\.")


def _after_earlier_files(log_dir: Path) -> None:
    """Readers take a folder's event files in name order, and a name starts with its
    second: a session resumed within the second its predecessor began waits for the next,
    so its file (and its purge) comes after."""
    seconds = [int(m.group(1)) for p in log_dir.iterdir() if (m := _EVENT_TIME.match(p.name))]
    while seconds and int(time.time()) == max(seconds):
        time.sleep(0.05)
