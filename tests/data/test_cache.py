"""The on-disk cache of decoded splits: decoded once, then memory-mapped; a changed file
or a half-written entry is decoded again; an unwritable folder falls back to RAM."""

from __future__ import annotations

import json
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import e2vpt.data.cache as cache_module
import e2vpt.data.core as core
from e2vpt.data import TRAINVAL, DataError, Task, load_task
from e2vpt.data.cache import (
    CACHE_ENV,
    IMAGES_FILE,
    LOCK_FILE,
    META_FILE,
    CacheKey,
    cache_root,
    load_decoded,
)
from e2vpt.data.core import Chunk
from tests.conftest import write_vtab_tree
from tests.data.test_benchmark_datasets import write_cifar100, write_fgvc_shapes
from tests.data.test_image_folder import write_image, write_tree

LAYOUT = {"train": {"cat": 3, "dog": 2}, "val": {"cat": 1, "dog": 2}, "test": {"cat": 1, "dog": 1}}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "pets"
    write_tree(root, LAYOUT)
    return root


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths the decoder is asked for, in order (it still decodes them)."""
    seen: list[Path] = []
    plain, aspect = core.read_image, core.read_image_and_aspect

    def read_image(path: Path, *args: object, **kwargs: object) -> np.ndarray:
        seen.append(path)
        return plain(path, *args, **kwargs)

    def read_image_and_aspect(path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
        seen.append(path)
        return aspect(path, size)

    monkeypatch.setattr(core, "read_image", read_image)
    monkeypatch.setattr(core, "read_image_and_aspect", read_image_and_aspect)
    return seen


def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_args: object, **_kwargs: object) -> np.ndarray:
        raise AssertionError("decoded although the cache holds the images")

    monkeypatch.setattr(core, "read_image", fail)
    monkeypatch.setattr(core, "read_image_and_aspect", fail)


def entries(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def files_of(entry: Path) -> list[str]:
    """An entry's files, its lock aside (temp files included: none may be left)."""
    return sorted(p.name for p in entry.iterdir() if p.name != LOCK_FILE)


def mapping_of(tensor: torch.Tensor) -> str | None:
    """The file whose mapping holds the tensor's first byte (None: anonymous memory)."""
    ptr = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        low, high = (int(x, 16) for x in parts[0].split("-"))
        if low <= ptr < high:
            return parts[5] if len(parts) == 6 and parts[5].startswith("/") else None
    return None


def assert_same_task(a: Task, b: Task) -> None:
    assert a.classes == b.classes and sorted(a.splits) == sorted(b.splits)
    for name, split in a.splits.items():
        other = b.splits[name]
        assert torch.equal(split.images, other.images), name
        assert torch.equal(split.labels, other.labels), name
        assert (split.crops is None) == (other.crops is None), name
        for x, y in zip(split.crops or [], other.crops or [], strict=True):
            assert torch.equal(x, y), name


def test_second_load_reads_the_cache_and_equals_a_plain_decode(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = load_task(str(folder), 8, progress=False, cache=False)
    assert "(decoded in memory; cache off)" in capsys.readouterr().err
    assert entries(cache_root()) == []  # cache=False writes nothing
    first = load_task(str(folder), 8, progress=False)
    (entry,) = entries(cache_root())
    assert f"(decoded once to the cache at {entry})" in capsys.readouterr().err
    no_decoding(monkeypatch)
    second = load_task(str(folder), 8, progress=False)
    assert f"(from the cache at {entry})" in capsys.readouterr().err
    assert_same_task(first, plain)
    assert_same_task(second, plain)
    meta = json.loads((entry / META_FILE).read_text())
    assert meta["classes"] == ["cat", "dog"] and meta["count"] == 10
    assert meta["labels"] == [0, 0, 0, 1, 1, 0, 1, 1, 0, 1]  # train, val, test
    assert files_of(entry) == [IMAGES_FILE, META_FILE]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_cached_splits_are_memory_mapped_copy_on_write(folder: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.from_numpy warns on a read-only array
        load_task(str(folder), 8, progress=False, quiet=True)
        task = load_task(str(folder), 8, progress=False, quiet=True)
    (entry,) = entries(cache_root())
    images = entry / IMAGES_FILE
    for name in ("train", "val", "test"):
        assert mapping_of(task.splits[name].images) == str(images)
    plain = load_task(str(folder), 8, progress=False, cache=False, quiet=True)
    assert mapping_of(plain.splits["train"].images) is None
    # train ∪ val is a view of the same pages, not a concatenated copy
    trainval = task.split(TRAINVAL)
    assert mapping_of(trainval.images) == str(images)
    assert trainval.images.data_ptr() == task.splits["train"].images.data_ptr()
    assert torch.equal(trainval.images, plain.split(TRAINVAL).images)
    assert torch.equal(trainval.labels, plain.split(TRAINVAL).labels)
    # writing into a mapped tensor changes this process's copy, never the file
    before = images.read_bytes()
    task.splits["train"].images[0].fill_(7)
    assert images.read_bytes() == before
    again = load_task(str(folder), 8, progress=False, quiet=True)
    assert torch.equal(again.splits["train"].images[0], plain.splits["train"].images[0])


def test_training_style_use_of_mapped_splits(folder: Path) -> None:
    load_task(str(folder), 8, progress=False, quiet=True)
    task = load_task(str(folder), 8, progress=False, quiet=True)
    plain = load_task(str(folder), 8, progress=False, cache=False, quiet=True)
    idx = torch.tensor([4, 0, 2, 2])
    x = task.split(TRAINVAL).images[idx].to("cpu").float().div(255)
    assert torch.equal(x, plain.split(TRAINVAL).images[idx].float().div(255))
    both = torch.cat([task.splits["train"].images, task.splits["test"].images])
    assert both.shape == (7, 3, 8, 8)


def test_a_changed_file_is_decoded_again(folder: Path, decodes: list[Path]) -> None:
    load_task(str(folder), 8, progress=False, quiet=True)
    assert len(decodes) == 10
    decodes.clear()
    load_task(str(folder), 8, progress=False, quiet=True)
    assert decodes == []
    touched = folder / "train" / "dog" / "00.png"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # same pixels
    load_task(str(folder), 8, progress=False, quiet=True)
    assert len(decodes) == 10 and len(entries(cache_root())) == 2  # the old entry stays
    decodes.clear()
    new = write_image(touched, seed=99)  # new pixels
    task = load_task(str(folder), 8, progress=False, quiet=True)
    assert len(decodes) == 10
    assert torch.equal(task.splits["train"].images[3], torch.from_numpy(new).permute(2, 0, 1))


def test_a_half_written_or_damaged_entry_is_written_again(
    folder: Path, decodes: list[Path]
) -> None:
    first = load_task(str(folder), 8, progress=False, quiet=True)
    (entry,) = entries(cache_root())
    (entry / META_FILE).unlink()  # killed before its JSON: not an entry
    decodes.clear()
    again = load_task(str(folder), 8, progress=False, quiet=True)
    assert len(decodes) == 10 and (entry / META_FILE).is_file()
    assert_same_task(again, first)
    data = (entry / IMAGES_FILE).read_bytes()
    (entry / IMAGES_FILE).write_bytes(data[: len(data) // 2])  # truncated by hand
    decodes.clear()
    third = load_task(str(folder), 8, progress=False, quiet=True)
    assert len(decodes) == 10
    assert_same_task(third, first)
    assert files_of(entry) == [IMAGES_FILE, META_FILE]


def test_a_bad_image_leaves_no_entry_and_no_temp_files(folder: Path) -> None:
    (folder / "test" / "dog" / "00.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"cannot read image .*00\.png"):
        load_task(str(folder), 8, progress=False, quiet=True)
    for entry in entries(cache_root()):
        assert files_of(entry) == []


def test_an_unwritable_cache_folder_falls_back_to_memory(
    folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))  # below a file: never writable
    plain = load_task(str(folder), 8, progress=False, cache=False, quiet=True)
    task = load_task(str(folder), 8, progress=False)
    err = capsys.readouterr().err.strip().splitlines()[-2:]  # after the small-class notice
    assert err[0].startswith(f"e2vpt: cannot write the data cache at {blocker / 'cache'} (")
    assert f"set {CACHE_ENV} to a writable folder" in err[0]
    assert err[1].endswith("(decoded in memory)")
    assert_same_task(task, plain)


def test_the_cache_folder_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "e2vpt" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "e2vpt" / "data"


def test_images_are_written_chunk_by_chunk(tmp_path: Path) -> None:
    """Each chunk is on disk before the next is decoded: the first run's memory is one
    chunk, not the data set."""
    key = CacheKey("image-folder", "t", "spec", [], [], [0] * 6, 4, {})
    entry = key.folder(cache_root())
    sizes: list[int] = []

    def chunks() -> Iterator[Chunk]:
        for i in range(3):
            (tmp,) = entry.glob(f".{IMAGES_FILE}.*.tmp")
            sizes.append(tmp.stat().st_size)
            yield Chunk(np.full((2, 3, 4, 4), i, dtype=np.uint8))

    decoded = load_decoded(key, 6, chunks)
    assert sizes[1] - sizes[0] == sizes[2] - sizes[1] == 2 * 3 * 4 * 4
    assert decoded.images[:, 0, 0, 0].tolist() == [0, 0, 1, 1, 2, 2]
    assert mapping_of(decoded.images) == str(entry / IMAGES_FILE)


@pytest.mark.parametrize("locks", [True, False], ids=["locked", "racing"])
def test_concurrent_writers_of_one_entry_agree(
    folder: Path, locks: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the entry lock, one decodes and the others read its entry; without (a file
    system with no locks), all write and the last rename wins: the same content."""
    if not locks:
        monkeypatch.setattr(cache_module, "fcntl", None)
    plain = load_task(str(folder), 8, progress=False, cache=False, quiet=True)
    results: list[Task] = []
    errors: list[BaseException] = []

    def load() -> None:
        try:
            results.append(load_task(str(folder), 8, progress=False, quiet=True))
        except BaseException as err:  # noqa: BLE001 — reported below
            errors.append(err)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 4
    for task in results:
        assert_same_task(task, plain)
    (entry,) = entries(cache_root())
    assert files_of(entry) == [IMAGES_FILE, META_FILE]
    assert_same_task(load_task(str(folder), 8, progress=False, quiet=True), plain)


@pytest.mark.skipif(cache_module.fcntl is None, reason="no advisory locks")
def test_a_second_loader_waits_for_the_writer_then_reads_its_entry(
    folder: Path, decodes: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import fcntl

    load_task(str(folder), 8, progress=False, quiet=True)
    (entry,) = entries(cache_root())
    (entry / META_FILE).unlink()  # as if the first writer were still at work
    stale = entry / f".{IMAGES_FILE}.dead.tmp"  # and a killed one had left this
    stale.write_bytes(b"x" * 100)
    decodes.clear()
    with open(entry / LOCK_FILE, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        waiter = threading.Thread(target=lambda: load_task(str(folder), 8, progress=False))
        waiter.start()
        waiter.join(timeout=0.5)
        assert waiter.is_alive() and decodes == []  # waiting, not decoding
        assert f"waiting for another process decoding into the data cache at {entry}" in (
            capsys.readouterr().err
        )
    waiter.join()
    assert len(decodes) == 10  # the "writer" left no entry: the waiter writes it
    assert files_of(entry) == [IMAGES_FILE, META_FILE]  # the stale temp removed


def test_fgvc_crops_survive_the_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from e2vpt.data.augment import augment_batch

    data = tmp_path / "CUB_200_2011"
    write_fgvc_shapes(data)
    plain = load_task(f"fgvc:{data}", 32, progress=False, cache=False, quiet=True)
    written = load_task(f"fgvc:{data}", 32, progress=False, quiet=True)
    no_decoding(monkeypatch)
    cached = load_task(f"fgvc:{data}", 32, progress=False, quiet=True)
    assert_same_task(written, plain)
    assert_same_task(cached, plain)
    (entry,) = entries(cache_root())
    assert files_of(entry) == ["crops.bin", IMAGES_FILE, META_FILE]
    train = cached.splits["train"]
    assert [tuple(c.shape) for c in train.crops] == [(3, 37, 111), (3, 111, 37), (3, 37, 37)]
    if sys.platform.startswith("linux"):
        assert mapping_of(train.crops[1]) == str(entry / "crops.bin")
    trainval, want = cached.split(TRAINVAL), plain.split(TRAINVAL)
    assert_same_task(Task("a", [], {TRAINVAL: trainval}), Task("a", [], {TRAINVAL: want}))
    idx = torch.tensor([0, 3, 4, 1])
    for name in ("random-crop-flip", "flip"):
        got = augment_batch(
            name, trainval.images, trainval.crops, idx, torch.Generator().manual_seed(3), 32
        )
        ref = augment_batch(
            name, want.images, want.crops, idx, torch.Generator().manual_seed(3), 32
        )
        assert torch.equal(got, ref)


def test_vtab_and_cifar_lt_from_the_cache_equal_a_plain_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_vtab_tree(tmp_path / "dtd", {"train800": 6, "val200": 3, "test": 4}, num_classes=47)
    write_cifar100(tmp_path / "cifar-100-python", per_class=4, test_per_class=1)
    specs = [f"vtab:{tmp_path / 'dtd'}", f"cifar100-lt10:{tmp_path / 'cifar-100-python'}"]
    plain = [load_task(s, 16, progress=False, cache=False, quiet=True) for s in specs]
    written = [load_task(s, 16, progress=False, quiet=True) for s in specs]
    no_decoding(monkeypatch)
    monkeypatch.setattr(core, "to_tensor", lambda *_: pytest.fail("resized again"))
    cached = [load_task(s, 16, progress=False, quiet=True) for s in specs]
    for p, w, c in zip(plain, written, cached, strict=True):
        assert_same_task(w, p)
        assert_same_task(c, p)
    vtab = cached[0]
    assert vtab.source.startswith("from the cache at")
    # train800, val200 and train800val200 are slices of one mapping: no copies
    ptr = vtab.splits["train"].images.data_ptr()
    assert vtab.splits[TRAINVAL].images.data_ptr() == ptr
    assert vtab.splits["val"].images.data_ptr() == ptr + 6 * 3 * 16 * 16
