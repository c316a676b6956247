"""Decoded splits on disk, memory-mapped: a file-backed task is decoded once, and every
later command, sweep trial, torchrun rank or Ray worker maps the same uint8 file (the
pages are the kernel's page cache, shared, and not anonymous memory that grows with
the data set).

An entry is a folder ``<cache dir>/<kind>_<name>_<size>_<hash>/``:

* ``images.npy`` — N×3×S×S uint8 (a plain ``.npy``: ``numpy.load`` reads it),
* ``crops.bin`` — FGVC's aspect-kept training images, one flat uint8 run (shapes and
  offsets in the JSON), rebuilt as views into the mapping,
* ``meta.json`` — labels, class names, shapes: written last, so an entry counts only once
  it exists and a killed write is never read.

The hash covers the loader kind, the data spec, every source file's path, size and
mtime (ns), the labels, the sizes and :data:`CACHE_FORMAT`: a changed file gives a new
entry (the old one stays until deleted). Every file is written to a temp file in the
entry folder, then renamed: two processes writing one entry at once each rename a
complete file of identical content, and the second rename simply wins. Arrays are mapped
copy-on-write (``mmap_mode="c"``): tensors are writable (no warning from
``torch.from_numpy``), and nothing ever writes to the file."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, writers race harmlessly
    fcntl = None  # type: ignore[assignment]

from e2vpt.data.core import Chunk, DataError, image_chunks, note
from e2vpt.files import publish, temp_path

# bump when the layout or the decoding changes: older entries are then never read
CACHE_FORMAT = 1
CACHE_ENV = "E2VPT_CACHE_DIR"
IMAGES_FILE = "images.npy"
CROPS_FILE = "crops.bin"
META_FILE = "meta.json"
LOCK_FILE = ".lock"
# a temp file untouched this long belongs to a writer that died (a live one writes on)
STALE_SECONDS = 3600
# free space asked for beyond the images themselves (crops, the JSON, other writers)
SPACE_MARGIN = 1.05
CHANNELS = 3


def cache_root() -> Path:
    """``$E2VPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/e2vpt/data``, else
    ``~/.cache/e2vpt/data``."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "e2vpt" / "data"


def fingerprint(paths: Iterable[Path]) -> list[tuple[str, int, int]]:
    """(absolute path, size, mtime in ns) of each source file: what the key hashes, so
    an edited, replaced or touched file is decoded again."""
    rows = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as err:
            raise DataError(f"cannot read image {path}: {err.strerror}") from None
        rows.append((str(Path(path).absolute()), st.st_size, st.st_mtime_ns))
    return rows


@dataclass
class CacheKey:
    """What an entry depends on; ``digest`` names it."""

    kind: str  # image-folder | vtab | fgvc | cifar100-lt
    name: str  # the task's name, for a readable folder name
    spec: str  # the data spec, paths resolved
    files: list[tuple[str, int, int]]
    classes: list[str]
    labels: list[int]
    size: int  # the stored square side
    extra: dict[str, Any]  # anything else the pixels depend on (input size, crops, …)

    @cached_property
    def digest(self) -> str:
        blob = json.dumps(
            {
                "format": CACHE_FORMAT,
                "kind": self.kind,
                "spec": self.spec,
                "files": self.files,
                "classes": self.classes,
                "labels": self.labels,
                "size": self.size,
                "extra": self.extra,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def folder(self, root: Path) -> Path:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.name).strip("-.")[:40] or "task"
        return root / f"{self.kind}_{name}_{self.size}_{self.digest}"


@dataclass
class Decoded:
    """A task's images: N×3×S×S uint8 (memory-mapped when from the cache) and the
    aspect-kept crops of the first ``crop_count``; ``source`` is the summary's words."""

    images: torch.Tensor
    crops: list[torch.Tensor] | None
    source: str
    entry: Path | None = None  # the cache entry read or written


class _CacheUnwritable(Exception):
    """The cache folder cannot take the entry: decode in memory instead."""


def load_decoded(
    key: CacheKey,
    count: int,
    chunks: Callable[[], Iterable[Chunk]],
    crop_count: int = 0,
    cache: bool = True,
    quiet: bool = False,
) -> Decoded:
    """The ``count`` images ``chunks`` decodes (in order), from the cache entry of
    ``key`` when one is complete, else decoded once into a new entry; in memory when
    ``cache`` is off or the cache folder cannot be written (said in one line)."""
    if not cache:
        return _in_memory(key, count, chunks, crop_count, "decoded in memory; cache off")
    root = cache_root()
    entry = key.folder(root)
    found = _open_entry(entry, key, count, crop_count)
    if found is not None:
        return Decoded(*found, source=f"from the cache at {entry}", entry=entry)
    try:
        with _entry_lock(entry, quiet) as locked:
            found = _open_entry(entry, key, count, crop_count)  # written while we waited
            if found is not None:
                return Decoded(*found, source=f"from the cache at {entry}", entry=entry)
            _remove_stale_temps(entry, every=locked)
            _write_entry(entry, key, count, chunks, crop_count)
    except _CacheUnwritable as err:
        note(
            f"cannot write the data cache at {root} ({err}); decoding in memory instead "
            f"(set {CACHE_ENV} to a writable folder, or pass --no-data-cache)",
            quiet,
        )
        return _in_memory(key, count, chunks, crop_count, "decoded in memory")
    found = _open_entry(entry, key, count, crop_count)
    if found is None:  # written a moment ago: only a file system that lies gets here
        raise DataError(f"the data cache entry {entry} cannot be read back; delete it")
    return Decoded(*found, source=f"decoded once to the cache at {entry}", entry=entry)


def load_image_files(
    kind: str,
    name: str,
    folder: Path,
    paths: list[Path],
    classes: list[str],
    labels: list[int],
    image_size: int,
    progress: bool,
    *,
    cache: bool,
    quiet: bool,
) -> Decoded:
    """Image files resized to ``image_size`` (no aspect kept), decoded once into the
    cache entry their paths, labels and size name: what the image-folder and VTAB-1k
    loaders share (FGVC keeps aspect and crops; CIFAR decodes arrays)."""
    key = CacheKey(
        kind=kind,
        name=name,
        spec=str(folder.resolve()),
        files=fingerprint(paths),
        classes=classes,
        labels=labels,
        size=image_size,
        extra={},
    )
    return load_decoded(
        key,
        len(paths),
        lambda: image_chunks(paths, image_size, f"decode {name}", progress),
        cache=cache,
        quiet=quiet,
    )


def _in_memory(
    key: CacheKey,
    count: int,
    chunks: Callable[[], Iterable[Chunk]],
    crop_count: int,
    source: str,
) -> Decoded:
    """Decoded into one preallocated tensor, chunk by chunk (no list of all images)."""
    images = torch.empty((count, CHANNELS, key.size, key.size), dtype=torch.uint8)
    crops: list[torch.Tensor] = []
    filled = 0
    for part in chunks():
        images[filled : filled + len(part.squares)] = torch.from_numpy(part.squares)
        filled += len(part.squares)
        crops.extend(torch.from_numpy(c) for c in part.crops)
    _check_count(filled, len(crops), count, crop_count)
    return Decoded(images, crops if crop_count else None, source)


def _check_count(filled: int, crops: int, count: int, crop_count: int) -> None:
    """A loader's bug, not the user's (its count and its chunks disagree)."""
    if filled != count or crops != crop_count:
        raise RuntimeError(
            f"decoded {filled} images and {crops} crops, expected {count}, {crop_count}"
        )


def _open_entry(
    entry: Path, key: CacheKey, count: int, crop_count: int
) -> tuple[torch.Tensor, list[torch.Tensor] | None] | None:
    """The mapped tensors of a complete entry that matches, else None (absent, half
    written, from another format or damaged: it is then written again)."""
    try:
        meta = json.loads((entry / META_FILE).read_text())
        if meta.get("format") != CACHE_FORMAT or meta.get("digest") != key.digest:
            return None
        if meta.get("labels") != key.labels or meta.get("classes") != key.classes:
            return None
        array = np.load(entry / IMAGES_FILE, mmap_mode="c", allow_pickle=False)
        if array.dtype != np.uint8 or array.shape != (count, CHANNELS, key.size, key.size):
            return None
        images = torch.from_numpy(array)
        if not crop_count:
            return images, None
        shapes = meta.get("crop_shapes")
        if not isinstance(shapes, list) or len(shapes) != crop_count:
            return None
        sizes = [CHANNELS * int(h) * int(w) for h, w in shapes]
        if os.path.getsize(entry / CROPS_FILE) != sum(sizes):
            return None
        flat = torch.from_numpy(np.memmap(entry / CROPS_FILE, dtype=np.uint8, mode="c"))
        crops, offset = [], 0
        for (h, w), n in zip(shapes, sizes, strict=True):
            crops.append(flat[offset : offset + n].view(CHANNELS, int(h), int(w)))
            offset += n
        return images, crops
    except (OSError, ValueError, TypeError, KeyError):
        return None


@contextmanager
def _entry_lock(entry: Path, quiet: bool) -> Iterator[bool]:
    """One writer per entry at a time; the others wait, then read its entry, so torchrun
    ranks or sweep workers started together decode once, not once each (and do not each
    need the disk space). Best effort: yields whether the lock is held; where the file
    system has no locks, writers race harmlessly (temp files, then renames)."""
    with _unwritable():
        entry.mkdir(parents=True, exist_ok=True)
        handle = open(entry / LOCK_FILE, "a+b")  # noqa: SIM115 — closed below
    try:
        locked = False
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                note(f"waiting for another process decoding into the data cache at {entry}", quiet)
                fcntl.flock(handle, fcntl.LOCK_EX)
                locked = True
            except OSError:
                pass  # no locks on this file system
        yield locked
    finally:
        handle.close()  # releases the lock


def _remove_stale_temps(entry: Path, every: bool) -> None:
    """Temp files a killed writer left (gigabytes, possibly): all of them when this
    process holds the entry's lock (no live writer has any), else those untouched for
    :data:`STALE_SECONDS`."""
    now = time.time()
    for tmp in entry.glob(".*.tmp"):
        try:
            if every or now - tmp.stat().st_mtime > STALE_SECONDS:
                tmp.unlink()
        except OSError:
            pass  # gone already, or not ours to remove


def _temp(entry: Path, name: str, temps: list[Path]) -> Path:
    """A fresh temp file in the entry (same file system: the rename is atomic), noted in
    ``temps`` so a failure removes it."""
    tmp = temp_path(entry / name)
    temps.append(tmp)
    return tmp


def _write_entry(
    entry: Path,
    key: CacheKey,
    count: int,
    chunks: Callable[[], Iterable[Chunk]],
    crop_count: int,
) -> None:
    """Decode straight into temp files in the entry folder (one chunk in RAM at a time),
    then rename them and, last, the JSON. File-system failures become
    :class:`_CacheUnwritable`; a bad image's DataError passes through. Temp files never
    outlive a failure in this process."""
    temps: list[Path] = []
    try:
        with ExitStack() as files:
            with _unwritable():
                entry.mkdir(parents=True, exist_ok=True)
                need = count * CHANNELS * key.size * key.size
                free = shutil.disk_usage(entry).free
                if free < need * SPACE_MARGIN:
                    raise _CacheUnwritable(
                        f"{free / 2**30:.1f} GiB free, the images need {need / 2**30:.1f} GiB"
                    )
                images_tmp = _temp(entry, IMAGES_FILE, temps)
                images_out = files.enter_context(open(images_tmp, "wb", buffering=0))
                header = {
                    "descr": np.dtype(np.uint8).str,
                    "fortran_order": False,
                    "shape": (count, CHANNELS, key.size, key.size),
                }
                np.lib.format.write_array_header_1_0(images_out, header)
                crops_tmp = _temp(entry, CROPS_FILE, temps) if crop_count else None
                crops_out = (
                    files.enter_context(open(crops_tmp, "wb", buffering=0)) if crops_tmp else None
                )
            shapes: list[list[int]] = []
            filled = 0
            for part in chunks():  # a DataError from a bad image passes through
                with _unwritable():
                    _write_all(images_out, part.squares)
                    if crops_out is not None:
                        for crop in part.crops:
                            _write_all(crops_out, crop)
                filled += len(part.squares)
                shapes.extend([int(c.shape[1]), int(c.shape[2])] for c in part.crops)
            _check_count(filled, len(shapes), count, crop_count)
            with _unwritable():
                for handle in (images_out, crops_out):
                    if handle is not None:
                        handle.flush()
                        os.fsync(handle.fileno())
        meta = {
            "format": CACHE_FORMAT,
            "digest": key.digest,
            "kind": key.kind,
            "name": key.name,
            "spec": key.spec,
            "size": key.size,
            "extra": key.extra,
            "count": count,
            "classes": key.classes,
            "labels": key.labels,
            "crop_shapes": shapes if crop_count else None,
            "files": len(key.files),
        }
        with _unwritable():
            publish(images_tmp, entry / IMAGES_FILE)
            if crops_tmp is not None:
                publish(crops_tmp, entry / CROPS_FILE)
            meta_tmp = _temp(entry, META_FILE, temps)
            with open(meta_tmp, "w") as handle:
                json.dump(meta, handle)
                handle.flush()
                os.fsync(handle.fileno())
            publish(meta_tmp, entry / META_FILE)  # last: from now on the entry counts
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def _write_all(handle: BinaryIO, array: np.ndarray) -> None:
    """The array's bytes, straight to the file (unbuffered: on disk, not in a Python
    buffer, before the next chunk is decoded); a raw write may take only part."""
    view = memoryview(np.ascontiguousarray(array)).cast("B")
    while view:
        view = view[handle.write(view) :]


@contextmanager
def _unwritable() -> Iterator[None]:
    """An OSError of the cache's own files → :class:`_CacheUnwritable` (its reason)."""
    try:
        yield
    except OSError as err:
        raise _CacheUnwritable(err.strerror or str(err)) from None
