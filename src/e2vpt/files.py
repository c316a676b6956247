"""Files written whole or not at all (temp file in the same folder, then rename), and the
cheap check that a folder can take them. A full disk is a :class:`DiskFullError` that
names the folder, and the temp file is gone. A leaf: imports nothing of e2vpt's but errors."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from e2vpt.errors import ConfigError, DiskFullError

# the errors of a write that more room would fix
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def publish(tmp: str | Path, target: Path) -> None:
    """Give the temp file ordinary permissions (mkstemp makes it 0600), then rename."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, target)


def temp_path(target: Path, suffix: str = ".tmp") -> Path:
    """A fresh temp file beside ``target`` (same file system, so the rename is atomic);
    ``suffix`` for writers that insist on one (torch.export wants ``.pt2``)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    return Path(tmp)


class _Recording:
    """A file that remembers the OSError of a failed write: serializers that wrap it in
    their own error (torch.save: a RuntimeError) still tell a full disk apart."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.handle.flush()


def atomic_write_with(path: Path, write: Callable[[Any], object]) -> None:
    """Write ``path`` whole or not at all: ``write(file)`` fills a temp file beside it (a
    serializer that takes a file object, such as ``torch.save``, streams into it), which
    is flushed to disk and renamed over ``path``. On any failure the temp file is removed;
    a full disk is a :class:`DiskFullError` naming the folder."""
    tmp: str | None = None
    recording: _Recording | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            recording = _Recording(handle)
            write(recording)
            handle.flush()
            os.fsync(handle.fileno())
        publish(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        cause = recording.error if recording is not None and recording.error else err
        if isinstance(cause, OSError) and cause.errno in _FULL:
            raise disk_full(path, cause) from None
        raise


def disk_full(path: Path, err: OSError) -> DiskFullError:
    """The error for ``path`` that could not be written for want of room."""
    reason = "disk quota exceeded" if err.errno == errno.EDQUOT else "no space left on device"
    return DiskFullError(
        f"cannot write {path.name} in {path.parent}: {reason}; free some space there, or "
        "write to another folder (nothing half-written was kept)"
    )


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_with(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def check_writable(directory: Path, flag: str = "`output_dir`") -> None:
    """Fail early, and without leaving anything behind, when ``directory`` cannot be
    created or written: its nearest existing ancestor must be a folder that takes a file."""
    target = directory.resolve()
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(
            f"cannot write the run folder {directory}: {existing} is a file; choose another {flag}"
        )
    try:
        fd, tmp = tempfile.mkstemp(prefix=".e2vpt-write-check.", dir=existing)
    except OSError as err:
        raise ConfigError(
            f"cannot write the run folder {directory} ({existing}: {err.strerror}); choose "
            f"another {flag}"
        ) from None
    os.close(fd)
    os.unlink(tmp)
