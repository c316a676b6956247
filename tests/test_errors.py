"""One error hierarchy: every error a user can fix derives from E2VPTError, whichever
module raises it, so the command line catches them all in one place."""

from __future__ import annotations

import pytest

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


def test_a_script_reports_a_user_error_in_one_line_and_lets_bugs_through(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def bad_input() -> int:
        raise errors.DataError("folder x has no train800.txt; pass a VTAB-1k task folder")

    def stopped() -> int:
        raise KeyboardInterrupt

    def bug() -> int:
        raise ZeroDivisionError

    assert errors.exit_code_of(lambda: 0, "bench.py") == 0
    assert errors.exit_code_of(bad_input, "bench.py") == 2
    assert capsys.readouterr().err == (
        "bench.py: error: folder x has no train800.txt; pass a VTAB-1k task folder\n"
    )
    assert errors.exit_code_of(stopped, "bench.py", "finished trials are kept") == 130
    assert capsys.readouterr().err == "\nbench.py: interrupted; finished trials are kept\n"
    with pytest.raises(ZeroDivisionError):  # not a user error: the traceback is wanted
        errors.exit_code_of(bug, "bench.py")
