"""CIFAR-100-LT, built deterministically from the standard ``cifar-100-python`` folder:
class i keeps its first n_i = ⌊500 · ρ^(−i/99)⌋ training images (file order), the test
set stays the balanced 10,000. The LT training set is ``trainval``; a tenth of each
class (⌊n_i/10⌋, its last images) is held out as ``val`` for hyper-parameter selection,
the rest is ``train``. The papers report the error rate."""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from e2vpt.data.cache import CacheKey, fingerprint, load_decoded
from e2vpt.data.core import TRAINVAL, Chunk, DataError, Split, Task, array_chunks, check_labels
from e2vpt.data.formats import CIFAR100_LT, LoadOptions, get_format
from e2vpt.data.spec import DataSpec

LT_GROUP = "cifar100-lt"
LT_RATIOS = (10, 50, 100)
NUM_CLASSES = 100
MAX_PER_CLASS = 500


def lt_class_counts(
    ratio: float, num_classes: int = NUM_CLASSES, n_max: int = MAX_PER_CLASS
) -> list[int]:
    """n_i = ⌊n_max · ρ^(−i/(C−1))⌋: the exponential profile of Cui et al. / Cao et al."""
    return [int(n_max * ratio ** (-i / (num_classes - 1))) for i in range(num_classes)]


class _ArraysOnly(pickle.Unpickler):
    """The CIFAR pickles hold dicts of numpy arrays and lists; nothing else may load."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_batch(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(
            f"{path} is missing; expected the standard cifar-100-python folder "
            "(train, test, meta) from https://www.cs.toronto.edu/~kriz/cifar.html"
        )
    try:
        data = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except Exception as err:  # any corrupt or foreign pickle
        raise DataError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise DataError(f"{path} does not hold a CIFAR batch dictionary")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def _images_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_batch(path)
    if "data" not in batch or "fine_labels" not in batch:
        raise DataError(f"{path} has no 'data' / 'fine_labels' (is it CIFAR-10's folder?)")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch["fine_labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(f"{path}: expected N×3072 images with N labels, got {data.shape}")
    check_labels(labels.tolist(), NUM_CLASSES, path)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar100_lt(
    folder: str | Path,
    ratio: int,
    image_size: int,
    progress: bool = True,
    *,
    cache: bool = True,
    quiet: bool = False,
) -> Task:
    folder = Path(folder)
    if ratio < 1:
        raise DataError(
            f"the imbalance ratio must be >= 1 (the papers use {LT_RATIOS}), got {ratio}"
        )
    if not folder.is_dir():
        raise DataError(
            f"CIFAR-100 folder {folder} does not exist; pass cifar100-lt{ratio}:<path to "
            "cifar-100-python>"
        )
    train_x, train_y = _images_labels(folder / "train")
    test_x, test_y = _images_labels(folder / "test")
    meta = _load_batch(folder / "meta") if (folder / "meta").is_file() else {}
    names = [
        n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("fine_label_names", [])
    ]
    classes = names if len(names) == NUM_CLASSES else [str(c) for c in range(NUM_CLASSES)]
    per_class = lt_class_counts(ratio, n_max=int(np.bincount(train_y, minlength=100).max()))
    kept, held = [], []
    for cls, n in enumerate(per_class):
        rows = np.flatnonzero(train_y == cls)[:n]
        n_val = len(rows) // 10
        kept.append(rows[: len(rows) - n_val])
        held.append(rows[len(rows) - n_val :])
    train_rows, val_rows = np.concatenate(kept), np.concatenate(held)
    # stored in the order train, val, test (train ∪ val a view); trainval keeps file
    # order (its batches, hence its results, as before), gathered from train and val
    lt_rows = np.concatenate([train_rows, val_rows])
    trainval_rows = np.argsort(lt_rows, kind="stable")
    n_train, n_lt = len(train_rows), len(lt_rows)
    labels = np.concatenate([train_y[lt_rows], test_y])
    name = f"cifar100_lt{ratio}"
    sources = [folder / "train", folder / "test"]
    key = CacheKey(
        kind="cifar100-lt",
        name=name,
        spec=str(folder.resolve()),
        files=fingerprint(sources),
        classes=classes,
        labels=labels.tolist(),
        size=image_size,
        extra={"ratio": ratio},
    )

    def chunks() -> Iterator[Chunk]:
        yield from array_chunks(train_x[lt_rows], image_size)
        yield from array_chunks(test_x, image_size)

    decoded = load_decoded(key, len(labels), chunks, cache=cache, quiet=quiet)
    images, all_labels = decoded.images, torch.from_numpy(labels)

    def split(start: int, stop: int) -> Split:
        return Split(images[start:stop], all_labels[start:stop])

    task = Task(
        name=name,
        classes=classes,
        group=LT_GROUP,
        source=decoded.source,
        **get_format(CIFAR100_LT).protocol(),
    )
    gather = torch.from_numpy(trainval_rows)
    task.splits = {
        "train": split(0, n_train),
        "val": split(n_train, n_lt),
        TRAINVAL: Split(images[gather], all_labels[gather]),
        "test": split(n_lt, len(labels)),
    }
    return task


def load_spec(spec: DataSpec, image_size: int, options: LoadOptions) -> Task:
    """The format's loader (see :mod:`e2vpt.data.formats`)."""
    return load_cifar100_lt(
        spec.path or "",
        spec.ratio or 0,
        image_size,
        options.progress,
        cache=options.cache,
        quiet=options.quiet,
    )
