"""What every loader returns: a Task of uint8 splits, and the decoding they share.

Every split is decoded once into a uint8 tensor; the training loop normalises batches
on the device (FGVC's random crops are cut on the CPU from the aspect-kept images its
training splits keep beside the central squares). VTAB-1k's 1,000 training images fit
in memory many times over, and no epoch waits on JPEG decoding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from e2vpt.errors import DataError


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
            self.splits[name] = Split(
                torch.cat([train.images, val.images]),
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
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err


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


def decode_images_and_aspect(
    paths: Sequence[Path], size: int, desc: str, progress: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """N×3×size×size uint8 central squares (as ``decode_images(keep_aspect=True)``) and,
    per image, the 3×h×w uint8 aspect-kept image (shorter side = size), each decoded once."""
    squares, fulls = [], []
    for path in tqdm(paths, desc=desc, disable=not progress, leave=False):
        square, full = read_image_and_aspect(path, size)
        squares.append(square)
        fulls.append(torch.from_numpy(full).permute(2, 0, 1).contiguous())
    return to_tensor(np.stack(squares), size), fulls


def decode_images(
    paths: Sequence[Path],
    size: int,
    desc: str,
    progress: bool,
    keep_aspect: bool = False,
) -> torch.Tensor:
    images = np.stack(
        [
            read_image(path, size, keep_aspect)
            for path in tqdm(paths, desc=desc, disable=not progress, leave=False)
        ]
    )
    return to_tensor(images, size)  # already at size: only the layout changes


def check_labels(labels: Sequence[int], num_classes: int, source: Path) -> None:
    for label in labels:
        if not 0 <= label < num_classes:
            raise DataError(
                f"{source}: label {label} is out of range for {num_classes} classes "
                f"(labels must be 0 … {num_classes - 1})"
            )
