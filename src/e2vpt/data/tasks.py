"""``load_task`` and its cheap pre-check: a ``data`` string parsed once
(:class:`~e2vpt.data.spec.DataSpec`) and handed to its format's loader and checks
(:mod:`e2vpt.data.formats`), whatever the format."""

from __future__ import annotations

from e2vpt.data.core import DataError, Task, check_classes
from e2vpt.data.formats import LoadOptions
from e2vpt.data.image_folder import check_fraction, missing_folder_error
from e2vpt.data.spec import DataSpec
from e2vpt.notices import note


def _check_val_fraction(spec: DataSpec, text: str, val_fraction: float | None) -> None:
    if val_fraction is None:
        return
    if not spec.format.val_fraction:
        raise DataError(
            f"val_fraction is for image folders; {text} has its protocol's own val split "
            "(drop `val_fraction`)"
        )
    check_fraction(val_fraction)


def check_task_spec(spec: str, val_fraction: float | None = None) -> None:
    """The cheap part of :func:`load_task`'s checks (a well-formed spec, a known built-in
    name, a folder that exists, a usable ``val_fraction``), so a mistyped ``data`` fails
    before any backbone or image is loaded."""
    parsed = DataSpec.parse(spec)
    _check_val_fraction(parsed, spec, val_fraction)
    if parsed.folder is not None and not parsed.folder.is_dir():
        raise missing_folder_error(parsed.path or "")
    parsed.format.precheck(parsed, val_fraction)


def load_task(
    spec: str,
    image_size: int,
    seed: int = 0,
    progress: bool = True,
    *,
    val_fraction: float | None = None,
    cache: bool = True,
    quiet: bool = False,
) -> Task:
    """The task a ``data`` string names (see :mod:`e2vpt.data`), with one summary line on
    stderr (``quiet`` silences it and the notes). File-backed tasks are decoded once into
    the on-disk cache and memory-mapped after (``cache=False``: decoded into RAM every
    time). ``val_fraction`` (image folders only) holds out that part of train as val,
    stratified, drawn with ``seed``."""
    parsed = DataSpec.parse(spec)
    _check_val_fraction(parsed, spec, val_fraction)
    options = LoadOptions(
        seed=seed, progress=progress, val_fraction=val_fraction, cache=cache, quiet=quiet
    )
    task = parsed.format.load(parsed, image_size, options)
    # every format's loader checks earlier where it can (before decoding); this catches
    # any format, a registered one included
    check_classes(f"data {spec}", task.classes, "give data with one label per class")
    note(task.summary(), quiet=quiet, once=False)
    return task
