"""Tasks: the papers' benchmarks (VTAB-1k, FGVC, CIFAR-100-LT), image folders and
built-in generated tasks, all loaded into in-memory uint8 splits.

A task is named by one string (``TrainConfig.data``):

* ``builtin:position`` | ``builtin:orientation`` | ``builtin:count`` — generated, no files
* ``vtab:<root>/<task>`` — a VTAB-1k task folder with train800/val200/train800val200/test lists
* ``fgvc:<folder>`` — an FGVC dataset with train/val/test.json
* ``cifar100-lt<ρ>:<cifar-100-python folder>`` — CIFAR-100-LT with imbalance ratio ρ
* any other string — an image folder ``root/{train,val,test}/<class>/*``
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from e2vpt.data.cifar_lt import LT_RATIOS, load_cifar100_lt
from e2vpt.data.core import TRAINVAL, DataError, Split, Task, decode_images, to_tensor
from e2vpt.data.fgvc import load_fgvc
from e2vpt.data.synthetic import GENERATORS, generate_split
from e2vpt.data.vtab import load_vtab

BUILTIN_PREFIX = "builtin:"
VTAB_PREFIX = "vtab:"
FGVC_PREFIX = "fgvc:"
CIFAR_LT = re.compile(r"^cifar100-lt(\d+):(.+)$")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
SPLITS = ("train", "val", "test")


def builtin_tasks() -> list[str]:
    return [BUILTIN_PREFIX + name for name in GENERATORS]


def load_builtin(name: str, image_size: int, seed: int = 0) -> Task:
    task = name.removeprefix(BUILTIN_PREFIX)
    if task not in GENERATORS:
        raise DataError(
            f"unknown built-in task {name!r}; choose one of {', '.join(builtin_tasks())}"
        )
    out = Task(name=task, classes=[], group="structured")
    for split in SPLITS:
        images, labels, classes = generate_split(task, split, seed=seed)
        out.classes = classes
        out.splits[split] = Split(to_tensor(images, image_size), torch.from_numpy(labels))
    return out


def load_image_folder(root: str | Path, image_size: int, progress: bool = True) -> Task:
    """``root/train/<class>/*`` (+ optional ``val`` and ``test`` with the same classes)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data folder {root} does not exist; give a folder with train/<class>/ images, "
            f"vtab:<root>/<task>, fgvc:<folder>, cifar100-lt<ρ>:<folder> or a built-in task "
            f"({', '.join(builtin_tasks())})"
        )
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"{root} has no train/ folder; expected {root}/train/<class>/*.jpg")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{train_dir} has no class sub-folders; expected train/<class>/*.jpg")
    task = Task(name=root.name or str(root), classes=classes)
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
        images = decode_images([p for p, _ in files], image_size, f"decode {split}", progress)
        labels = torch.tensor([index for _, index in files], dtype=torch.int64)
        task.splits[split] = Split(images, labels)
    return task


def check_task_spec(spec: str) -> None:
    """The cheap part of :func:`load_task`'s checks (a known built-in name, a folder that
    exists), so a mistyped ``--data`` fails before any backbone or image is loaded."""
    if spec.startswith(BUILTIN_PREFIX):
        if spec.removeprefix(BUILTIN_PREFIX) not in GENERATORS:
            raise DataError(
                f"unknown built-in task {spec!r}; choose one of {', '.join(builtin_tasks())}"
            )
        return
    folder = spec
    for prefix in (VTAB_PREFIX, FGVC_PREFIX):
        folder = folder.removeprefix(prefix)
    if match := CIFAR_LT.match(spec):
        folder = match[2]
    elif spec.startswith("cifar100-lt"):
        load_task(spec, 1)  # its own message for a malformed name
    if not Path(folder).is_dir():
        raise DataError(
            f"data folder {folder} does not exist; give a folder with train/<class>/ images, "
            f"vtab:<root>/<task>, fgvc:<folder>, cifar100-lt<ρ>:<folder> or a built-in task "
            f"({', '.join(builtin_tasks())})"
        )


def load_task(spec: str, image_size: int, seed: int = 0, progress: bool = True) -> Task:
    """The task a ``data`` string names (see the module docstring)."""
    if spec.startswith(BUILTIN_PREFIX):
        return load_builtin(spec, image_size, seed=seed)
    if spec.startswith(VTAB_PREFIX):
        return load_vtab(spec.removeprefix(VTAB_PREFIX), image_size, progress=progress)
    if spec.startswith(FGVC_PREFIX):
        return load_fgvc(spec.removeprefix(FGVC_PREFIX), image_size, progress=progress)
    if match := CIFAR_LT.match(spec):
        return load_cifar100_lt(match[2], int(match[1]), image_size, progress=progress)
    if spec.startswith("cifar100-lt"):
        raise DataError(
            f"{spec!r}: write cifar100-lt<ρ>:<cifar-100-python folder>, e.g. "
            f"cifar100-lt{LT_RATIOS[-1]}:data/cifar-100-python"
        )
    return load_image_folder(spec, image_size, progress=progress)


__all__ = [
    "TRAINVAL",
    "DataError",
    "Split",
    "Task",
    "builtin_tasks",
    "check_task_spec",
    "load_task",
]
