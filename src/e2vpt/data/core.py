"""What every loader returns: a Task of uint8 splits, and the decoding they share.

Every split is decoded once into a uint8 tensor; the training loop normalises batches
on the device (FGVC's random crops are cut on the CPU from the aspect-kept images its
training splits keep beside the central squares), and no epoch waits on JPEG decoding.
File-backed tasks keep the decoded tensors in an on-disk cache, memory-mapped
(:mod:`e2vpt.data.cache`), so RAM does not grow with the data set."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from e2vpt.errors import DataError
from e2vpt.notices import note  # noqa: F401 (the data loaders' notice channel)
from e2vpt.progressbars import progress_bar


@dataclass
class Split:
    images: torch.Tensor  # uint8, N×3×H×W
    labels: torch.Tensor  # int64, N
    # per image a uint8 3×h×w tensor of differing sizes, kept on the CPU: the image with
    # its shorter side at the store size, aspect kept (FGVC's random crops reach all of it;
    # ``images`` holds the central squares, for evaluation). None: crop from ``images``.
    crops: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return int(self.labels.numel())


# the split a final run trains on: train ∪ val (VTAB's train800val200)
TRAINVAL = "trainval"
# the splits a summary line counts (trainval is train ∪ val)
SUMMARY_SPLITS = ("train", "val", "test")
# a summary names the classes up to this many, else it counts them
NAMED_CLASSES = 10


def _adjacent(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
    """``cat([a, b])`` as a view when ``b`` starts where ``a`` ends in one storage (the
    loaders lay train and val out so), else None: train ∪ val of a memory-mapped cache
    then costs no copy."""
    if not (a.is_contiguous() and b.is_contiguous()) or a.shape[1:] != b.shape[1:]:
        return None
    if a.dtype != b.dtype or a.device != b.device or a.numel() == 0:
        return None
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return None
    if b.storage_offset() != a.storage_offset() + a.numel():
        return None
    return a.as_strided((a.shape[0] + b.shape[0], *a.shape[1:]), a.stride())


@dataclass
class Task:
    name: str
    classes: list[str]
    splits: dict[str, Split] = field(default_factory=dict)
    group: str | None = None  # VTAB group (natural / specialized / structured), fgvc, …
    metric: str = "top1"  # top1 | error (CIFAR-100-LT reports the error rate)
    augment: str = "none"  # the protocol's training augmentation (FGVC: random-crop-flip)
    # the protocol's input statistics: backbone (its own mean/std) | imagenet (VTAB, FGVC)
    normalization: str = "backbone"
    # where the pixels came from, for the summary line: "from the cache at …", …
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> Split:
        if name == TRAINVAL and name not in self.splits and self.has_split(name):
            train, val = self.splits["train"], self.splits["val"]
            crops = (
                train.crops + val.crops
                if train.crops is not None and val.crops is not None
                else None
            )
            images = _adjacent(train.images, val.images)
            self.splits[name] = Split(
                torch.cat([train.images, val.images]) if images is None else images,
                torch.cat([train.labels, val.labels]),
                crops,
            )
        if name not in self.splits:
            raise DataError(
                f"task {self.name!r} has no {name!r} split (it has {sorted(self.splits)})"
            )
        return self.splits[name]

    def has_split(self, name: str) -> bool:
        return name in self.splits or (name == TRAINVAL and {"train", "val"} <= set(self.splits))

    def summary(self) -> str:
        """One line that says what was loaded, so a wrong folder or a missing split shows
        before any training: ``data: pets — 2 classes (cat, dog); train 8, val 2, test —``."""
        if self.num_classes <= NAMED_CLASSES:
            classes = f" ({', '.join(str(c) for c in self.classes)})"
        else:
            classes = ""
        plural = "" if self.num_classes == 1 else "es"
        counts = ", ".join(
            f"{s} {len(self.splits[s]) if s in self.splits else '—'}" for s in SUMMARY_SPLITS
        )
        source = f" ({self.source})" if self.source else ""
        return f"data: {self.name} — {self.num_classes} class{plural}{classes}; {counts}{source}"


def rows_of(images: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
    """``images[rows]``: a view when the rows are consecutive (a cache's pages stay
    shared, nothing is copied), else the copy indexing makes."""
    if rows and list(rows) == list(range(rows[0], rows[0] + len(rows))):
        return images[rows[0] : rows[0] + len(rows)]
    return images[torch.tensor(rows, dtype=torch.int64)]


def to_tensor(images_hwc: np.ndarray, size: int, chunk: int = 512) -> torch.Tensor:
    """N×H×W×3 uint8 → N×3×size×size uint8, resized in chunks (a float copy of a whole
    CIFAR set at 224 would take gigabytes)."""
    x = torch.from_numpy(images_hwc).permute(0, 3, 1, 2).contiguous()
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, x.shape[0], chunk):
        part = x[start : start + chunk].float()
        out[start : start + chunk] = (
            F.interpolate(
                part, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
            .round()
            .clamp(0, 255)
            .to(torch.uint8)
        )
    return out


def read_image(path: Path, size: int, keep_aspect: bool = False) -> np.ndarray:
    """RGB uint8 size×size. ``keep_aspect``: shorter side → size, then the central square
    (FGVC's Resize(256) before its crops); otherwise a plain resize (VTAB's protocol)."""
    try:
        with Image.open(path) as img:
            return resize_image(img, size, keep_aspect)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err


def resize_image(img: Image.Image, size: int, keep_aspect: bool = False) -> np.ndarray:
    """An opened image as :func:`read_image` returns it."""
    img = img.convert("RGB")
    if keep_aspect:
        w, h = img.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    elif img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def read_image_and_aspect(path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One decode, two views: the central size×size square of ``read_image(keep_aspect=True)``
    (identical pixels) and the whole resized image it is cut from (shorter side → size,
    aspect kept), both RGB uint8 H×W×3."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            img = img.resize((nw, nh), Image.Resampling.BILINEAR)
            full = np.array(img, dtype=np.uint8)  # a writable copy, for torch.from_numpy
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(full[top : top + size, left : left + size]), full


# images decoded per chunk: a chunk is what decoding holds in RAM before it is written
# to the cache file or the in-memory tensor (256 at 224² are 38 MB)
DECODE_CHUNK = 256


@dataclass
class Chunk:
    """Consecutive decoded images: N×3×S×S uint8 squares and, for those among the first
    ``crop_count`` of the run (FGVC's trained splits), their 3×h×w aspect-kept images."""

    squares: np.ndarray
    crops: list[np.ndarray] = field(default_factory=list)


def image_chunks(
    paths: Sequence[Path],
    size: int,
    desc: str,
    progress: bool,
    keep_aspect: bool = False,
    crop_count: int = 0,
    chunk: int = DECODE_CHUNK,
) -> Iterator[Chunk]:
    """``paths`` decoded in order, ``chunk`` at a time, so no caller ever holds more
    than one chunk of decoded pixels besides its output. The first ``crop_count`` images
    are decoded once into both views (:func:`read_image_and_aspect`), the rest as
    :func:`read_image` does; either way the squares are the same pixels."""
    bar = progress_bar(total=len(paths), show=progress, desc=desc, unit="img", leave=False)
    try:
        for start in range(0, len(paths), chunk):
            squares, crops = [], []
            for i, path in enumerate(paths[start : start + chunk], start=start):
                if i < crop_count:
                    square, full = read_image_and_aspect(path, size)
                    crops.append(np.ascontiguousarray(full.transpose(2, 0, 1)))
                else:
                    square = read_image(path, size, keep_aspect)
                squares.append(square)
                bar.update()
            yield Chunk(np.ascontiguousarray(np.stack(squares).transpose(0, 3, 1, 2)), crops)
    finally:
        bar.close()


def array_chunks(images_hwc: np.ndarray, size: int, chunk: int = DECODE_CHUNK) -> Iterator[Chunk]:
    """In-memory N×H×W×3 uint8 images (CIFAR's pickles) resized to size, chunk by chunk."""
    for start in range(0, len(images_hwc), chunk):
        part = np.ascontiguousarray(images_hwc[start : start + chunk])
        yield Chunk(to_tensor(part, size).numpy())


# classification needs this many classes (one class: every prediction is right)
MIN_CLASSES = 2


def check_classes(where: str, classes: Sequence[object], fix: str) -> None:
    """A task of fewer than :data:`MIN_CLASSES` classes is an error: a one-class model
    scores 100 % without learning anything. ``where`` names the data, ``fix`` says how
    to give more classes."""
    if len(classes) < MIN_CLASSES:
        named = f" ({', '.join(map(str, classes))})" if classes else ""
        raise DataError(
            f"{where} has {len(classes)} class{named}; classification needs at least "
            f"{MIN_CLASSES}: {fix}"
        )


def check_labels(labels: Sequence[int], num_classes: int, source: Path) -> None:
    for label in labels:
        if not 0 <= label < num_classes:
            raise DataError(
                f"{source}: label {label} is out of range for {num_classes} classes "
                f"(labels must be 0 … {num_classes - 1})"
            )
