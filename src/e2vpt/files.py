"""Files written whole or not at all (temp file in the same folder, then rename), and the
cheap check that a folder can take them. A leaf: imports nothing of e2vpt's but errors."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from e2vpt.errors import ConfigError


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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
