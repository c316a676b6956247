"""Tasks: the papers' benchmarks (VTAB-1k, FGVC, CIFAR-100-LT), image folders and
built-in generated tasks, all loaded as uint8 splits (file-backed ones memory-mapped
from the on-disk cache of :mod:`e2vpt.data.cache`).

A task is named by one string (``TrainConfig.data``):

* ``builtin:position`` | ``builtin:orientation`` | ``builtin:count`` — generated, no files
* ``vtab:<root>/<task>`` — a VTAB-1k task folder with train800/val200/train800val200/test lists
* ``fgvc:<folder>`` — an FGVC dataset with train/val/test.json
* ``cifar100-lt<ρ>:<cifar-100-python folder>`` — CIFAR-100-LT with imbalance ratio ρ
* any other string — an image folder ``root/{train,val,test}/<class>/**`` (val and test
  optional; ``val_fraction`` holds out part of train when val is missing)
"""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import torch

from e2vpt.data.cache import cache_root, load_image_files
from e2vpt.data.cifar_lt import LT_RATIOS, load_cifar100_lt
from e2vpt.data.core import TRAINVAL, DataError, Split, Task, note, to_tensor
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
    out = Task(name=task, classes=[], group="structured", source="generated")
    for split in SPLITS:
        images, labels, classes = generate_split(task, split, seed=seed)
        out.classes = classes
        out.splits[split] = Split(to_tensor(images, image_size), torch.from_numpy(labels))
    return out


def _walk_images(folder: Path) -> list[Path]:
    """Every image below ``folder``, at any depth, sorted (as torchvision's ImageFolder
    finds them); hidden files and folders (``.name``) skipped, links followed once."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()

    def unreadable(err: OSError) -> None:
        raise DataError(f"cannot read {err.filename}: {err.strerror}; fix its permissions")

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:  # a link back up: walked already
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(
            Path(dirpath) / name
            for name in filenames
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS
        )
    return sorted(found)


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _names(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def _hold_out(
    files: list[tuple[Path, int]], fraction: float, seed: int
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """(train, val): per class round(fraction × n) images to val, at least 1 where the
    class has 2 or more and never its last one; drawn with ``seed`` per class, so one
    class's images do not move another's draw. Both keep the sorted file order."""
    by_class: dict[int, list[int]] = {}
    for row, (_, label) in enumerate(files):
        by_class.setdefault(label, []).append(row)
    held: set[int] = set()
    for label, rows in by_class.items():
        n = len(rows)
        k = 0 if n < 2 else min(n - 1, max(1, math.floor(fraction * n + 0.5)))
        pick = np.random.default_rng([seed, label]).permutation(n)[:k]
        held.update(rows[i] for i in pick)
    train = [f for row, f in enumerate(files) if row not in held]
    val = [f for row, f in enumerate(files) if row in held]
    return train, val


def _check_fraction(val_fraction: float | None) -> None:
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise DataError(
            f"val_fraction must lie strictly between 0 and 1, got {val_fraction}; "
            "e.g. --val-fraction 0.1 holds out 10 % of train as val"
        )


def load_image_folder(
    root: str | Path,
    image_size: int,
    progress: bool = True,
    *,
    val_fraction: float | None = None,
    seed: int = 0,
    cache: bool = True,
    quiet: bool = False,
) -> Task:
    """``root/train/<class>/**`` (+ optional ``val`` and ``test`` with the same classes);
    images at any depth below a class folder. Every class folder must hold images and
    every split the same classes: an empty or missing folder would silently change the
    head's outputs or the metric. ``val_fraction`` holds out a stratified, seeded part
    of train as val when the folder has none."""
    root = Path(root)
    _check_fraction(val_fraction)
    if not root.is_dir():
        raise DataError(
            f"data folder {root} does not exist; give a folder with train/<class>/ images, "
            f"vtab:<root>/<task>, fgvc:<folder>, cifar100-lt<ρ>:<folder> or a built-in task "
            f"({', '.join(builtin_tasks())})"
        )
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"{root} has no train/ folder; expected {root}/train/<class>/*.jpg")
    classes = _class_dirs(train_dir)
    if not classes:
        raise DataError(f"{train_dir} has no class sub-folders; expected train/<class>/*.jpg")
    present = [s for s in SPLITS if (root / s).is_dir()]
    if val_fraction is not None and "val" in present:
        raise DataError(
            f"{root} has a val/ split and val_fraction {val_fraction} was given; drop "
            "--val-fraction to use val/, or remove val/ to hold out part of train"
        )
    listed: dict[str, list[tuple[Path, int]]] = {}
    empty: list[str] = []
    missing: dict[str, list[str]] = {}
    for split in present:
        split_dir = root / split
        found = _class_dirs(split_dir)
        extra = [c for c in found if c not in classes]
        if extra:
            raise DataError(
                f"{split_dir} has classes {extra} that train/ does not have; every split "
                "must use train's class folders"
            )
        listed[split] = []
        for index, cls in enumerate(classes):
            if cls not in found:
                missing.setdefault(split, []).append(cls)
                continue
            images = _walk_images(split_dir / cls)
            if not images:
                empty.append(f"{split}/{cls}")
            listed[split].extend((path, index) for path in images)
    if empty:  # first: an empty train/<class> is also "missing" from the other splits
        verb = "holds" if len(empty) == 1 else "hold"
        folders = "the folder" if len(empty) == 1 else "the folders"
        raise DataError(
            f"{root}: {_names(empty)} {verb} no images ({', '.join(sorted(IMAGE_EXTENSIONS))}"
            f"); remove {folders} or add images"
        )
    if missing:
        split, lacking = next(iter(missing.items()))
        raise DataError(
            f"{root / split} lacks class folders that train/ has: {_names(lacking)}; add "
            f"{split}/<class>/ images for each, or remove {split}/"
        )
    if val_fraction is not None:
        listed["train"], listed["val"] = _hold_out(listed["train"], val_fraction, seed)
        if not listed["val"]:
            raise DataError(
                f"val_fraction {val_fraction} holds out no image: every class of {train_dir} "
                "has a single image; add images or drop --val-fraction"
            )
        note(
            f"{root}: held out {100 * val_fraction:g} % of train as val: "
            f"{len(listed['val'])} images, stratified, seed {seed}",
            quiet,
        )
    elif "val" not in listed:
        note(
            f"{root} has no val/ split: no held-out metric during training (use "
            "--val-fraction F to hold out part of train)",
            quiet,
        )
    if "test" not in listed:
        note(f"{root} has no test/ split: no test metric (add test/<class>/ images)", quiet)
    order = [s for s in SPLITS if s in listed]  # train, val, test: train ∪ val is a view
    files = [f for s in order for f in listed[s]]
    paths = [p for p, _ in files]
    name = root.name or str(root)
    labels = [label for _, label in files]
    decoded = load_image_files(
        "image-folder",
        name,
        root,
        paths,
        classes,
        labels,
        image_size,
        progress,
        cache=cache,
        quiet=quiet,
    )
    task = Task(name=name, classes=classes, source=decoded.source)
    start = 0
    for split in order:
        n = len(listed[split])
        labels = torch.tensor([label for _, label in listed[split]], dtype=torch.int64)
        task.splits[split] = Split(decoded.images[start : start + n], labels)
        start += n
    return task


def _not_image_folder(spec: str) -> bool:
    return spec.startswith((BUILTIN_PREFIX, VTAB_PREFIX, FGVC_PREFIX, "cifar100-lt"))


def _check_val_fraction(spec: str, val_fraction: float | None) -> None:
    if val_fraction is None:
        return
    if _not_image_folder(spec):
        raise DataError(
            f"val_fraction is for image folders; {spec} has its protocol's own val split "
            "(drop --val-fraction)"
        )
    _check_fraction(val_fraction)


def check_task_spec(spec: str, val_fraction: float | None = None) -> None:
    """The cheap part of :func:`load_task`'s checks (a known built-in name, a folder that
    exists, a usable ``val_fraction``), so a mistyped ``--data`` fails before any
    backbone or image is loaded."""
    _check_val_fraction(spec, val_fraction)
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
    if val_fraction is not None and (Path(folder) / "val").is_dir():
        raise DataError(
            f"{folder} has a val/ split and val_fraction {val_fraction} was given; drop "
            "--val-fraction to use val/, or remove val/ to hold out part of train"
        )


def load_task(
    spec: str,
    image_size: int,
    seed: int = 0,
    progress: bool = True,
    *,
    val_fraction: float | None = None,
    cache: bool = True,
    quiet: bool = False,
) -> Task:
    """The task a ``data`` string names (see the module docstring), with one summary
    line on stderr (``quiet`` silences it and the notes). File-backed tasks are decoded
    once into the on-disk cache and memory-mapped after (``cache=False``: decoded into
    RAM every time). ``val_fraction`` (image folders only) holds out that part of train
    as val, stratified, drawn with ``seed``."""
    _check_val_fraction(spec, val_fraction)
    task = _load(spec, image_size, seed, progress, val_fraction, cache, quiet)
    if not quiet:
        print(task.summary(), file=sys.stderr, flush=True)
    return task


def _load(
    spec: str,
    image_size: int,
    seed: int,
    progress: bool,
    val_fraction: float | None,
    cache: bool,
    quiet: bool,
) -> Task:
    if spec.startswith(BUILTIN_PREFIX):
        return load_builtin(spec, image_size, seed=seed)
    options = dict(progress=progress, cache=cache, quiet=quiet)
    if spec.startswith(VTAB_PREFIX):
        return load_vtab(spec.removeprefix(VTAB_PREFIX), image_size, **options)
    if spec.startswith(FGVC_PREFIX):
        return load_fgvc(spec.removeprefix(FGVC_PREFIX), image_size, **options)
    if match := CIFAR_LT.match(spec):
        return load_cifar100_lt(match[2], int(match[1]), image_size, **options)
    if spec.startswith("cifar100-lt"):
        raise DataError(
            f"{spec!r}: write cifar100-lt<ρ>:<cifar-100-python folder>, e.g. "
            f"cifar100-lt{LT_RATIOS[-1]}:data/cifar-100-python"
        )
    return load_image_folder(spec, image_size, val_fraction=val_fraction, seed=seed, **options)


__all__ = [
    "TRAINVAL",
    "DataError",
    "Split",
    "Task",
    "builtin_tasks",
    "cache_root",
    "check_task_spec",
    "load_task",
]
