"""VTAB-1k from the prepared layout most visual-PEFT code bases share (no TensorFlow):
``<root>/<task>/`` holding the images and four split lists whose lines read
``relative/path.jpg <label>``. Images are resized to the backbone's input size with
no augmentation, as the protocol says."""

from __future__ import annotations

from pathlib import Path

import torch

from e2vpt.data.cache import load_image_files
from e2vpt.data.core import (
    TRAINVAL,
    DataError,
    Split,
    Task,
    check_labels,
    rows_of,
)
from e2vpt.data.formats import VTAB, LoadOptions, get_format
from e2vpt.data.spec import DataSpec

NATURAL, SPECIALIZED, STRUCTURED = "natural", "specialized", "structured"
VTAB_GROUPS = (NATURAL, SPECIALIZED, STRUCTURED)

# task → (group, classes), as the VTAB-1k benchmark defines them
VTAB_TASKS: dict[str, tuple[str, int]] = {
    "caltech101": (NATURAL, 102),
    "cifar100": (NATURAL, 100),
    "dtd": (NATURAL, 47),
    "oxford_flowers102": (NATURAL, 102),
    "oxford_iiit_pet": (NATURAL, 37),
    "svhn": (NATURAL, 10),
    "sun397": (NATURAL, 397),
    "patch_camelyon": (SPECIALIZED, 2),
    "eurosat": (SPECIALIZED, 10),
    "resisc45": (SPECIALIZED, 45),
    "diabetic_retinopathy": (SPECIALIZED, 5),
    "clevr_count": (STRUCTURED, 8),
    "clevr_distance": (STRUCTURED, 6),
    "dmlab": (STRUCTURED, 6),
    "kitti_distance": (STRUCTURED, 4),
    "dsprites_location": (STRUCTURED, 16),
    "dsprites_orientation": (STRUCTURED, 16),
    "smallnorb_azimuth": (STRUCTURED, 18),
    "smallnorb_elevation": (STRUCTURED, 9),
}

# folder names of the widely shared prepared release → the names above
VTAB_ALIASES = {
    "cifar": "cifar100",
    "clevr_dist": "clevr_distance",
    "kitti": "kitti_distance",
    "dsprites_loc": "dsprites_location",
    "dsprites_ori": "dsprites_orientation",
    "smallnorb_azi": "smallnorb_azimuth",
    "smallnorb_ele": "smallnorb_elevation",
    "diabetic_retinopathy_detection": "diabetic_retinopathy",
}

# split list → our split name (train/val select hyper-parameters, trainval/test report)
VTAB_SPLIT_FILES = {
    "train": "train800.txt",
    "val": "val200.txt",
    TRAINVAL: "train800val200.txt",
    "test": "test.txt",
}


def vtab_task_name(folder: str | Path) -> str:
    name = Path(folder).name.lower()
    return VTAB_ALIASES.get(name, name)


def read_split_list(path: Path) -> list[tuple[str, int]]:
    if not path.is_file():
        raise DataError(
            f"split file {path} is missing; a VTAB-1k task folder needs "
            f"{', '.join(VTAB_SPLIT_FILES.values())} (lines `relative/path.jpg <label>`)"
        )
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        try:
            entries.append((parts[0], int(parts[1])))
        except (IndexError, ValueError):
            raise DataError(
                f"{path}, line {number}: expected `relative/path.jpg <integer label>`, got {line!r}"
            ) from None
    if not entries:
        raise DataError(f"split file {path} lists no images")
    return entries


def load_vtab(
    folder: str | Path,
    image_size: int,
    progress: bool = True,
    *,
    cache: bool = True,
    quiet: bool = False,
) -> Task:
    """One VTAB-1k task; class count and group from VTAB_TASKS for the 19 known names,
    else (a custom task in the same layout) the largest label + 1 and no group."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(
            f"VTAB-1k task folder {folder} does not exist; pass vtab:<root>/<task> with "
            f"<task> one of {', '.join(VTAB_TASKS)}"
        )
    name = vtab_task_name(folder)
    lists = {split: read_split_list(folder / file) for split, file in VTAB_SPLIT_FILES.items()}
    if name in VTAB_TASKS:
        group, num_classes = VTAB_TASKS[name]
    else:
        group, num_classes = None, 1 + max(label for e in lists.values() for _, label in e)
    for split, entries in lists.items():
        check_labels([label for _, label in entries], num_classes, folder / VTAB_SPLIT_FILES[split])
    # train800val200 repeats train800 and val200: decode every distinct file once, in
    # first-seen order (train800, val200, test), so each list is a slice — a view, no copy
    index: dict[str, int] = {}
    for entries in lists.values():
        for rel, _ in entries:
            index.setdefault(rel, len(index))
    unique = list(index)
    paths = [folder / rel for rel in unique]
    for rel, path in zip(unique, paths, strict=True):
        if not path.is_file():
            source = next(f for s, f in VTAB_SPLIT_FILES.items() if rel in dict(lists[s]))
            raise DataError(f"{folder / source} lists {rel}, but {path} does not exist")
    classes = [str(c) for c in range(num_classes)]
    labels = [label for s in VTAB_SPLIT_FILES for _, label in lists[s]]
    decoded = load_image_files(
        "vtab",
        name,
        folder,
        paths,
        classes,
        labels,
        image_size,
        progress,
        cache=cache,
        quiet=quiet,
    )
    protocol = get_format(VTAB).protocol()
    task = Task(name=name, classes=classes, group=group, source=decoded.source, **protocol)
    for split, entries in lists.items():
        rows = [index[rel] for rel, _ in entries]
        labels = torch.tensor([label for _, label in entries], dtype=torch.int64)
        task.splits[split] = Split(rows_of(decoded.images, rows), labels)
    return task


def load_spec(spec: DataSpec, image_size: int, options: LoadOptions) -> Task:
    """The format's loader (see :mod:`e2vpt.data.formats`)."""
    return load_vtab(
        spec.path or "", image_size, options.progress, cache=options.cache, quiet=options.quiet
    )
