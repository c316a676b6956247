"""FGVC (CUB-200, NABirds, Oxford Flowers, Stanford Dogs, Stanford Cars) from the json
splits the VPT line of work prepares: ``train.json`` / ``val.json`` / ``test.json``
(image path → class id) beside the dataset's image folder.

Each image is resized so its shorter side is 256/224 of the input size, aspect kept.
Every split stores the central square of that (evaluation centre-crops it to the input:
Resize 256 → CenterCrop 224); ``train`` and ``val`` (val is part of train+val in final
runs) also keep the whole resized images as ``Split.crops``, and training takes a random
input-size crop anywhere in one (the whole long side) + horizontal flip — the official
Resize 256 → RandomCrop 224 → flip, at any input size. ``test`` keeps the squares only."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from e2vpt.data.cache import CacheKey, fingerprint, load_decoded
from e2vpt.data.core import DataError, Split, Task, check_labels, image_chunks
from e2vpt.data.formats import FGVC, LoadOptions, get_format
from e2vpt.data.spec import DataSpec

FGVC_GROUP = "fgvc"
# dataset → classes; keys are folder names, lower-cased, without _ - or spaces
FGVC_DATASETS: dict[str, int] = {
    "cub": 200,
    "cub200": 200,
    "cub2002011": 200,  # CUB_200_2011
    "nabirds": 555,
    "oxfordflower": 102,
    "oxfordflowers": 102,
    "flowers102": 102,
    "stanforddogs": 120,
    "stanfordcars": 196,
}
FGVC_SPLITS = ("train", "val", "test")
# the splits trained on (val: in train+val), which keep the aspect-kept images to crop from
CROPPED_SPLITS = ("train", "val")
# where the json paths are relative to, tried in this order (datasets differ)
IMAGE_DIRS = ("", "images", "Images")


def fgvc_store_size(image_size: int) -> int:
    return round(image_size * 256 / 224)


def _key(folder: Path) -> str:
    return "".join(ch for ch in folder.name.lower() if ch.isalnum())


def _read_json_split(path: Path) -> list[tuple[str, int]]:
    if not path.is_file():
        raise DataError(
            f"split file {path} is missing; an FGVC dataset folder needs "
            f"{', '.join(s + '.json' for s in FGVC_SPLITS)} (image path → class id)"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read split file {path}: {err}") from err
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path} must hold a non-empty JSON object {{image path: class id}}")
    try:
        return sorted((str(rel), int(label)) for rel, label in data.items())
    except (TypeError, ValueError):
        raise DataError(f"{path}: every class id must be an integer") from None


def _image_dir(folder: Path, first: str) -> Path:
    for sub in IMAGE_DIRS:
        if (folder / sub / first).is_file():
            return folder / sub
    raise DataError(
        f"{folder / 'train.json'} lists {first}, found in none of "
        f"{', '.join(str(folder / s) for s in IMAGE_DIRS)}"
    )


def load_fgvc(
    folder: str | Path,
    image_size: int,
    progress: bool = True,
    *,
    cache: bool = True,
    quiet: bool = False,
) -> Task:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(
            f"FGVC dataset folder {folder} does not exist; pass fgvc:<folder holding "
            "train.json, val.json, test.json and the images>"
        )
    lists = {s: _read_json_split(folder / f"{s}.json") for s in FGVC_SPLITS}
    num_classes = FGVC_DATASETS.get(
        _key(folder), 1 + max(label for e in lists.values() for _, label in e)
    )
    image_dir = _image_dir(folder, lists["train"][0][0])
    store = fgvc_store_size(image_size)
    for split, entries in lists.items():
        check_labels([label for _, label in entries], num_classes, folder / f"{split}.json")
        for rel, _ in entries:
            if not (image_dir / rel).is_file():
                raise DataError(
                    f"{folder / f'{split}.json'} lists {rel}, but {image_dir / rel} does not exist"
                )
    # train, val, test in one run of images: train ∪ val is then a view, and the
    # aspect-kept crops are those of the first len(train) + len(val) images
    paths = [image_dir / rel for s in FGVC_SPLITS for rel, _ in lists[s]]
    crop_count = sum(len(lists[s]) for s in CROPPED_SPLITS)
    classes = [str(c) for c in range(num_classes)]
    key = CacheKey(
        kind="fgvc",
        name=folder.name,
        spec=str(folder.resolve()),
        files=fingerprint(paths),
        classes=classes,
        labels=[label for s in FGVC_SPLITS for _, label in lists[s]],
        size=store,
        extra={"input_size": image_size, "crops": list(CROPPED_SPLITS)},
    )
    decoded = load_decoded(
        key,
        len(paths),
        lambda: image_chunks(
            paths, store, f"decode {folder.name}", progress, keep_aspect=True, crop_count=crop_count
        ),
        crop_count=crop_count,
        cache=cache,
        quiet=quiet,
    )
    task = Task(
        name=folder.name,
        classes=classes,
        group=FGVC_GROUP,
        source=decoded.source,
        **get_format(FGVC).protocol(),
    )
    start = 0
    for split in FGVC_SPLITS:  # CROPPED_SPLITS come first
        n = len(lists[split])
        crops = None
        if split in CROPPED_SPLITS and decoded.crops is not None:
            crops = decoded.crops[start : start + n]
        labels = torch.tensor([label for _, label in lists[split]], dtype=torch.int64)
        task.splits[split] = Split(decoded.images[start : start + n], labels, crops)
        start += n
    return task


def load_spec(spec: DataSpec, image_size: int, options: LoadOptions) -> Task:
    """The format's loader (see :mod:`e2vpt.data.formats`)."""
    return load_fgvc(
        spec.path or "", image_size, options.progress, cache=options.cache, quiet=options.quiet
    )
