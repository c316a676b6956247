"""Tasks: image folders (``root/{train,val,test}/<class>/*``) and built-in generated ones.

Every split is decoded once into a uint8 tensor at the backbone's input size; the
training loop normalises batches on the device. Small downstream sets (VTAB-1k,
the built-in tasks) fit in memory many times over, and no epoch waits on JPEG decoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from e2vpt.data.synthetic import GENERATORS, generate_split

BUILTIN_PREFIX = "builtin:"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """A dataset folder, split or image is missing or unreadable."""


@dataclass
class Split:
    images: torch.Tensor  # uint8, N×3×H×W
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return int(self.labels.numel())


@dataclass
class Task:
    name: str
    classes: list[str]
    splits: dict[str, Split] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise DataError(
                f"task {self.name!r} has no {name!r} split (it has {sorted(self.splits)})"
            )
        return self.splits[name]


def builtin_tasks() -> list[str]:
    return [BUILTIN_PREFIX + name for name in GENERATORS]


def _to_tensor(images_hwc: np.ndarray, size: int) -> torch.Tensor:
    x = torch.from_numpy(images_hwc).permute(0, 3, 1, 2).contiguous()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = (
            F.interpolate(
                x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
            .round()
            .clamp(0, 255)
            .to(torch.uint8)
        )
    return x


def load_builtin(name: str, image_size: int, seed: int = 0) -> Task:
    task = name.removeprefix(BUILTIN_PREFIX)
    if task not in GENERATORS:
        raise DataError(
            f"unknown built-in task {name!r}; choose one of {', '.join(builtin_tasks())}"
        )
    out = Task(name=BUILTIN_PREFIX + task, classes=[])
    for split in SPLITS:
        images, labels, classes = generate_split(task, split, seed=seed)
        out.classes = classes
        out.splits[split] = Split(_to_tensor(images, image_size), torch.from_numpy(labels))
    return out


def _read_image(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err


def load_image_folder(root: str | Path, image_size: int, progress: bool = True) -> Task:
    """``root/train/<class>/*`` (+ optional ``val`` and ``test`` with the same classes)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data folder {root} does not exist; give a folder with train/<class>/ images "
            f"or a built-in task ({', '.join(builtin_tasks())})"
        )
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"{root} has no train/ folder; expected {root}/train/<class>/*.jpg")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{train_dir} has no class sub-folders; expected train/<class>/*.jpg")
    task = Task(name=str(root), classes=classes)
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        extra = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and p.name not in classes)
        if extra:
            raise DataError(
                f"{split_dir} has classes {extra} that train/ does not have; every split "
                "must use train's class folders"
            )
        files = [
            (path, index)
            for index, cls in enumerate(classes)
            if (split_dir / cls).is_dir()
            for path in sorted((split_dir / cls).iterdir())
            if path.suffix.lower() in IMAGE_EXTENSIONS
        ]
        if not files:
            if split == "train":
                raise DataError(f"{train_dir} holds no images ({sorted(IMAGE_EXTENSIONS)})")
            continue
        images = np.stack(
            [
                _read_image(path, image_size)
                for path, _ in tqdm(
                    files, desc=f"decode {split}", disable=not progress, leave=False
                )
            ]
        )
        labels = torch.tensor([index for _, index in files], dtype=torch.int64)
        task.splits[split] = Split(_to_tensor(images, image_size), labels)
    return task


def load_task(spec: str, image_size: int, seed: int = 0, progress: bool = True) -> Task:
    """A built-in task (``builtin:position``) or an image-folder path."""
    if spec.startswith(BUILTIN_PREFIX):
        return load_builtin(spec, image_size, seed=seed)
    return load_image_folder(spec, image_size, progress=progress)


__all__ = ["DataError", "Split", "Task", "builtin_tasks", "load_task"]
