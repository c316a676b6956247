"""Image folders (any ``data`` string no other format claims): ``root/train/<class>/**``
plus optional ``val`` and ``test`` with the same classes, images at any depth; a missing
val may be held out of train (``val_fraction``). Decoded once into the on-disk cache."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from e2vpt.data.builtin import builtin_tasks
from e2vpt.data.cache import load_image_files
from e2vpt.data.core import DataError, Split, Task, check_classes, note
from e2vpt.data.formats import FOLDER, LoadOptions, get_format
from e2vpt.data.spec import DataSpec

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
SPLITS = ("train", "val", "test")
# a class with fewer training images than this gets a notice (its accuracy is noise)
FEW_IMAGES = 5


def missing_folder_error(folder: str | Path) -> DataError:
    """A data folder that does not exist: the error names every way to write ``data``."""
    return DataError(
        f"data folder {folder} does not exist; give a folder with train/<class>/ images, "
        f"vtab:<root>/<task>, fgvc:<folder>, cifar100-lt<ρ>:<folder> or a built-in task "
        f"({', '.join(builtin_tasks())})"
    )


def val_conflict_error(root: str | Path, val_fraction: float) -> DataError:
    return DataError(
        f"{root} has a val/ split and val_fraction {val_fraction} was given; drop "
        "`val_fraction` to use val/, or remove val/ to hold out part of train"
    )


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


def _check_train_classes(train_dir: Path, classes: list[str]) -> None:
    """At least two class folders in train/ (read from the folder names: no decoding)."""
    if not classes:
        raise DataError(f"{train_dir} has no class sub-folders; expected train/<class>/*.jpg")
    check_classes(str(train_dir), classes, "add a train/<class>/ folder of images per class")


def _note_small_classes(
    root: Path, train: list[tuple[Path, int]], classes: list[str], quiet: bool
) -> None:
    """A notice naming the classes with fewer than :data:`FEW_IMAGES` training images."""
    counts = np.bincount([label for _, label in train], minlength=len(classes))
    small = [f"{classes[c]} ({int(n)})" for c, n in enumerate(counts) if n < FEW_IMAGES]
    if small:
        note(
            f"{root}: {_names(small)} {'has' if len(small) == 1 else 'have'} fewer than "
            f"{FEW_IMAGES} training images; their accuracy is noise (add images)",
            quiet,
        )


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


def check_fraction(val_fraction: float | None) -> None:
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise DataError(
            f"val_fraction must lie strictly between 0 and 1, got {val_fraction}; "
            "e.g. `val_fraction` 0.1 holds out 10 % of train as val"
        )


def _list_files(
    root: Path, classes: list[str], present: list[str]
) -> dict[str, list[tuple[Path, int]]]:
    """Per present split its (image, label) files in class then path order; an empty
    class folder, a class a split lacks or one that train/ lacks is an error."""
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
    return listed


def _hold_out_val(
    root: Path,
    listed: dict[str, list[tuple[Path, int]]],
    val_fraction: float | None,
    seed: int,
    quiet: bool,
) -> None:
    """Hold ``val_fraction`` of train out as val in ``listed`` when given, and note the
    splits a folder lacks."""
    train_dir = root / "train"
    if val_fraction is not None:
        listed["train"], listed["val"] = _hold_out(listed["train"], val_fraction, seed)
        if not listed["val"]:
            raise DataError(
                f"val_fraction {val_fraction} holds out no image: every class of {train_dir} "
                "has a single image; add images or drop `val_fraction`"
            )
        note(
            f"{root}: held out {100 * val_fraction:g} % of train as val: "
            f"{len(listed['val'])} images, stratified, seed {seed}",
            quiet,
        )
    elif "val" not in listed:
        note(
            f"{root} has no val/ split: no held-out metric during training (use "
            "`val_fraction` F to hold out part of train)",
            quiet,
        )
    if "test" not in listed:
        note(f"{root} has no test/ split: no test metric (add test/<class>/ images)", quiet)


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
    check_fraction(val_fraction)
    if not root.is_dir():
        raise missing_folder_error(root)
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"{root} has no train/ folder; expected {root}/train/<class>/*.jpg")
    present = [s for s in SPLITS if (root / s).is_dir()]
    if val_fraction is not None and "val" in present:
        raise val_conflict_error(root, val_fraction)
    classes = _class_dirs(train_dir)
    _check_train_classes(train_dir, classes)
    listed = _list_files(root, classes, present)
    _hold_out_val(root, listed, val_fraction, seed, quiet)
    _note_small_classes(root, listed["train"], classes, quiet)
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
    task = Task(name=name, classes=classes, source=decoded.source, **get_format(FOLDER).protocol())
    start = 0
    for split in order:
        n = len(listed[split])
        labels = torch.tensor([label for _, label in listed[split]], dtype=torch.int64)
        task.splits[split] = Split(decoded.images[start : start + n], labels)
        start += n
    return task


def load_spec(spec: DataSpec, image_size: int, options: LoadOptions) -> Task:
    """The format's loader (see :mod:`e2vpt.data.formats`)."""
    return load_image_folder(
        spec.path or "",
        image_size,
        options.progress,
        val_fraction=options.val_fraction,
        seed=options.seed,
        cache=options.cache,
        quiet=options.quiet,
    )


def check_spec(spec: DataSpec, val_fraction: float | None) -> None:
    """No val/ split beside a ``val_fraction``, and two classes or more in train/ (the
    folder's existence and the fraction's range are checked for every format before)."""
    if spec.folder is None:
        return
    if val_fraction is not None and (spec.folder / "val").is_dir():
        raise val_conflict_error(spec.folder, val_fraction)
    train_dir = spec.folder / "train"
    if train_dir.is_dir():  # no train/ at all: the loader's own error says what to add
        _check_train_classes(train_dir, _class_dirs(train_dir))
