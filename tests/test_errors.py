"""One error hierarchy: every error a user can fix derives from E2VPTError, whichever
module raises it, so the command line catches them all in one place."""

from __future__ import annotations

import e2vpt
from e2vpt import errors
from e2vpt.backbones import BackboneError
from e2vpt.checkpoint import CheckpointError
from e2vpt.cli.main import USER_ERRORS
from e2vpt.data import DataError
from e2vpt.methods.base import ConfigError
from e2vpt.sweeps.protocol import SweepError


def test_every_user_error_shares_one_base() -> None:
    classes = [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, Exception) and c is not errors.E2VPTError
    ]
    assert len(classes) >= 6
    for cls in classes:
        assert issubclass(cls, errors.E2VPTError), cls
        assert issubclass(cls, USER_ERRORS), cls
    # the old import paths name the same classes
    assert (ConfigError, DataError, CheckpointError, BackboneError, SweepError) == (
        errors.ConfigError,
        errors.DataError,
        errors.CheckpointError,
        errors.BackboneError,
        errors.SweepError,
    )
    assert e2vpt.E2VPTError is errors.E2VPTError
    # a diverged run is still a FloatingPointError for code that caught that
    assert issubclass(errors.DivergedError, FloatingPointError)


def test_interrupted_is_a_keyboard_interrupt_not_a_user_error() -> None:
    assert issubclass(errors.Interrupted, KeyboardInterrupt)
    assert not issubclass(errors.Interrupted, errors.E2VPTError)
