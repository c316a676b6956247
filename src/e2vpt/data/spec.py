"""The one parser of the ``data`` setting: a :class:`DataSpec` says which format a string
names (built-in task, image folder, VTAB-1k, FGVC, CIFAR-100-LT, … — see
:mod:`e2vpt.data.formats`), its folder, built-in name and imbalance ratio; it writes the
canonical absolute form stored in run configs and the short label in file names.

Imports no torch, numpy or PIL (a test holds it to that), so a command can parse
``--data`` before it loads them."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

from e2vpt.data.formats import DataFormat, format_of, get_format, list_formats
from e2vpt.errors import DataError
from e2vpt.runs.folder import readable_name

PathText = str | os.PathLike[str]


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``data`` string. ``path`` is the folder as written (absolute after
    :meth:`absolute`), None for a built-in task; ``name`` is a built-in task's name;
    ``ratio`` is CIFAR-100-LT's imbalance ratio."""

    kind: str
    path: str | None = None
    name: str | None = None
    ratio: int | None = None

    @classmethod
    def parse(cls, text: PathText, base_dir: PathText | None = None) -> DataSpec:
        """The spec ``text`` names; with ``base_dir``, a relative folder is resolved
        against it (without, it is kept as written: :meth:`absolute` resolves it against
        the working directory). A malformed string is a one-line :class:`DataError`."""
        text = os.fspath(text)
        if not text:
            choices = ", ".join(f.syntax for f in list_formats())
            raise DataError(f"data is empty; give one of {choices}")
        fmt = format_of(text)
        match = fmt.pattern.fullmatch(text)
        if match is None:
            raise DataError(f"data {text!r} is malformed; {_how_to_write(fmt)}")
        fields = match.groupdict()
        ratio = None if fields.get("ratio") is None else int(fields["ratio"])
        if ratio is not None and ratio < 1:
            raise DataError(
                f"data {text!r}: the ratio must be >= 1, got {ratio}; {_how_to_write(fmt)}"
            )
        spec = cls(fmt.kind, fields.get("path"), fields.get("name"), ratio)
        return spec if base_dir is None else spec.absolute(base_dir)

    @property
    def format(self) -> DataFormat:
        return get_format(self.kind)

    @property
    def folder(self) -> Path | None:
        return None if self.path is None else Path(self.path)

    def absolute(self, base_dir: PathText | None = None) -> DataSpec:
        """The spec with its folder absolute (resolved against ``base_dir``, by default
        the working directory; links are kept, as ``os.path.abspath`` keeps them)."""
        if self.path is None:
            return self
        base = os.getcwd() if base_dir is None else os.fspath(base_dir)
        return replace(self, path=os.path.abspath(os.path.join(base, self.path)))

    def __str__(self) -> str:
        """The spec written back (``vtab:/abs/dtd`` after :meth:`absolute`): what run
        configs store and compare."""
        return self.format.template.format(path=self.path, name=self.name, ratio=self.ratio)

    def label(self) -> str:
        """A short file-name label that still tells datasets apart: a built-in task's
        spec (``builtin-count``), else the folder's name and a hash of the absolute spec
        (``pets-3fa2c1``), as ``eval_<label>_<split>.json`` has always been named."""
        if self.path is None:
            return readable_name(str(self))
        text = str(self.absolute())
        digest = hashlib.sha256(text.encode()).hexdigest()[:6]
        # the name after the last ":" (a folder name holding ":" loses its head, as before)
        return f"{readable_name(Path(text.split(':')[-1]).name, 40)}-{digest}"


def _how_to_write(fmt: DataFormat) -> str:
    return f"write {fmt.syntax}, e.g. {fmt.example}"
