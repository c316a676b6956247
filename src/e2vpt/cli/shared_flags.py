"""Flags several commands share, written once: the device and a run's backbone weights."""

from __future__ import annotations

import argparse

from e2vpt.devices import DEVICE_CHOICES

DEVICE_HELP = f"{DEVICE_CHOICES} (default: auto)"  # predict


def add_weights_flag(parser: argparse.ArgumentParser) -> None:
    """``--weights``: for a run made on another machine, whose stored path is not here."""
    parser.add_argument(
        "--weights",
        help="the backbone's weights file, when the path the run stored does not hold it here "
        "(a run made on another machine)",
    )
