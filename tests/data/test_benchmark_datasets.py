"""VTAB-1k, FGVC and CIFAR-100-LT loaders on tiny trees the tests write, and every
error path (each message names the file)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from e2vpt.data import TRAINVAL, DataError, load_task
from e2vpt.data.cifar_lt import lt_class_counts
from e2vpt.data.fgvc import fgvc_store_size
from tests.conftest import write_vtab_tree

SIZES = {"train800": 8, "val200": 4, "test": 6}


def test_vtab_task_splits_sizes_classes_and_group(tmp_path: Path) -> None:
    lists = write_vtab_tree(tmp_path / "dtd", SIZES, num_classes=47)
    task = load_task(f"vtab:{tmp_path / 'dtd'}", image_size=32, progress=False)
    assert task.name == "dtd" and task.num_classes == 47 and task.group == "natural"
    assert {k: len(v) for k, v in task.splits.items()} == {
        "train": 8,
        "val": 4,
        TRAINVAL: 12,
        "test": 6,
    }
    assert task.splits["train"].images.shape == (8, 3, 32, 32)
    assert task.splits["test"].labels.tolist() == [label for _, label in lists["test"]]
    trainval = task.split(TRAINVAL)
    assert torch.equal(
        trainval.images, torch.cat([task.splits["train"].images, task.splits["val"].images])
    )


def test_vtab_release_folder_names_map_to_spec_names(tmp_path: Path) -> None:
    write_vtab_tree(tmp_path / "dsprites_loc", SIZES, num_classes=16)
    task = load_task(f"vtab:{tmp_path / 'dsprites_loc'}", image_size=16, progress=False)
    assert task.name == "dsprites_location" and task.num_classes == 16
    assert task.group == "structured"


def test_custom_vtab_style_task_counts_its_classes(tmp_path: Path) -> None:
    write_vtab_tree(tmp_path / "my_task", SIZES, num_classes=3)
    task = load_task(f"vtab:{tmp_path / 'my_task'}", image_size=16, progress=False)
    assert task.num_classes == 3 and task.group is None


def test_vtab_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_task(f"vtab:{tmp_path / 'nowhere'}", 16)
    folder = tmp_path / "svhn"
    write_vtab_tree(folder, SIZES, num_classes=10)
    (folder / "val200.txt").unlink()
    with pytest.raises(DataError, match="val200.txt is missing"):
        load_task(f"vtab:{folder}", 16, progress=False)

    write_vtab_tree(folder, SIZES, num_classes=10)
    (folder / "test.txt").write_text("images/test_0.jpg 10\n")  # svhn has 10 classes
    with pytest.raises(DataError, match=r"test\.txt: label 10 is out of range for 10"):
        load_task(f"vtab:{folder}", 16, progress=False)

    write_vtab_tree(folder, SIZES, num_classes=10)
    (folder / "images" / "train800_3.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="cannot read image .*train800_3.jpg"):
        load_task(f"vtab:{folder}", 16, progress=False)

    write_vtab_tree(folder, SIZES, num_classes=10)
    os.remove(folder / "images" / "val200_1.jpg")
    with pytest.raises(DataError, match=r"val200\.txt lists images/val200_1\.jpg"):
        load_task(f"vtab:{folder}", 16, progress=False)

    (folder / "images" / "val200_1.jpg").write_bytes((folder / "images/val200_0.jpg").read_bytes())
    (folder / "train800.txt").write_text("images/train800_0.jpg\n")
    with pytest.raises(DataError, match=r"train800\.txt, line 1"):
        load_task(f"vtab:{folder}", 16, progress=False)


def write_fgvc(folder: Path, per_split: int = 4, num_classes: int = 200) -> None:
    rng = np.random.default_rng(1)
    for split in ("train", "val", "test"):
        entries = {}
        for i in range(per_split):
            rel = f"{i:03d}.class/{split}_{i}.jpg"
            (folder / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, size=(30, 45, 3), dtype=np.uint8)  # not square
            Image.fromarray(pixels).save(folder / "images" / rel)
            entries[rel] = (7 * i) % num_classes
        (folder / f"{split}.json").write_text(json.dumps(entries))


def test_fgvc_splits_stored_larger_for_random_crops(tmp_path: Path) -> None:
    folder = tmp_path / "CUB_200_2011"
    write_fgvc(folder)
    task = load_task(f"fgvc:{folder}", image_size=32, progress=False)
    assert task.num_classes == 200 and task.group == "fgvc"
    assert task.augment == "random-crop-flip"
    store = fgvc_store_size(32)
    assert store == 37
    assert task.splits["train"].images.shape == (4, 3, store, store)
    assert len(task.split(TRAINVAL)) == 8


def test_fgvc_errors_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "StanfordDogs"
    write_fgvc(folder, num_classes=120)
    (folder / "val.json").unlink()
    with pytest.raises(DataError, match="val.json is missing"):
        load_task(f"fgvc:{folder}", 32, progress=False)
    write_fgvc(folder, num_classes=120)
    data = json.loads((folder / "test.json").read_text())
    (folder / "test.json").write_text(json.dumps({**data, next(iter(data)): 120}))
    with pytest.raises(DataError, match=r"test\.json: label 120 is out of range for 120"):
        load_task(f"fgvc:{folder}", 32, progress=False)
    write_fgvc(folder, num_classes=120)
    (folder / "train.json").write_text(json.dumps({"missing/x.jpg": 0}))
    with pytest.raises(DataError, match="missing/x.jpg"):
        load_task(f"fgvc:{folder}", 32, progress=False)


# FGVC's protocol: Resize(shorter side → 256/224 of the input, aspect kept), then train
# RandomCrop(input) anywhere in it + flip, eval CenterCrop(input). Input 32 → store 37.
SHAPES = {  # split → {file: (h, w)}
    "train": {"0_wide.png": (30, 90), "1_tall.png": (90, 30), "2_square.png": (40, 40)},
    "val": {"0_wide.png": (20, 50), "1_square.png": (37, 37)},
    "test": {"0_wide.png": (30, 90), "1_square.png": (40, 40)},
}


def write_fgvc_shapes(folder: Path) -> dict[str, list[Path]]:
    """PNGs of random pixels at SHAPES (lossless: the test's reference reads the same
    pixels); returns each split's files in the loader's (sorted) order."""
    rng = np.random.default_rng(3)
    files: dict[str, list[Path]] = {}
    for split, shapes in SHAPES.items():
        entries = {}
        for i, (name, (h, w)) in enumerate(sorted(shapes.items())):
            rel = f"{split}/{name}"
            (folder / "images" / split).mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "images" / rel)
            entries[rel] = i
            files.setdefault(split, []).append(folder / "images" / rel)
        (folder / f"{split}.json").write_text(json.dumps(entries))
    return files


def resized_shorter_side(path: Path, size: int) -> torch.Tensor:
    """Reference Resize(size) on the shorter side, aspect kept: 3×h×w uint8."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        scale = size / min(w, h)
        img = img.resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.array(img)).permute(2, 0, 1)


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[..., top : top + size, left : left + size]


def window_offsets(crop: torch.Tensor, full: torch.Tensor) -> list[tuple[int, int]]:
    """Every (top, left) where ``crop`` (or its mirror) is exactly a window of ``full``."""
    size = crop.shape[-1]
    h, w = full.shape[-2:]
    found = []
    for c in (crop, crop.flip(-1)):
        corner = full[:, : h - size + 1, : w - size + 1] == c[:, :1, :1]
        for top, left in corner.all(0).nonzero().tolist():
            if torch.equal(full[:, top : top + size, left : left + size], c):
                found.append((top, left))
    return found


def test_fgvc_train_crops_reach_the_whole_long_side(tmp_path: Path) -> None:
    from e2vpt.data.augment import augment_batch

    folder = tmp_path / "CUB_200_2011"
    files = write_fgvc_shapes(folder)
    task = load_task(f"fgvc:{folder}", image_size=32, progress=False)
    train = task.splits["train"]
    assert train.crops is not None and len(train.crops) == 3
    store = fgvc_store_size(32)
    assert [tuple(c.shape) for c in train.crops] == [(3, 37, 111), (3, 111, 37), (3, 37, 37)]
    generator = torch.Generator().manual_seed(0)
    for i, axis in ((0, 1), (1, 0)):  # wide: columns range over 0 … 79; tall: rows
        full = train.crops[i]
        assert torch.equal(full, resized_shorter_side(files["train"][i], store))
        offsets = []
        for _ in range(4):
            out = augment_batch(task.augment, train.images, train.crops, [i] * 250, generator, 32)
            assert out.shape == (250, 3, 32, 32) and out.dtype == torch.uint8
            for crop in out:
                found = window_offsets(crop, full)
                assert found, "every crop is an exact window of the aspect-kept image"
                offsets.append(found[0])
        along = [o[axis] for o in offsets]
        span = full.shape[-2:][axis] - 32
        square_start = (full.shape[-2:][axis] - store) // 2  # the central square's extent
        assert min(along) == 0 and max(along) == span  # both ends of the long side
        assert min(along) < square_start and max(along) > square_start + store - 32
        assert {o[1 - axis] for o in offsets} == set(range(store - 32 + 1))


def test_fgvc_eval_is_resize_shorter_side_then_centre_crop(tmp_path: Path) -> None:
    from e2vpt.data.core import read_image
    from e2vpt.inference import Normalizer

    folder = tmp_path / "StanfordCars"
    files = write_fgvc_shapes(folder)
    # input 28 → store 32: an even margin, as 256 → 224's (an odd one, e.g. 37 → 32, puts
    # the square-then-input centre crop up to a pixel off a one-step centre crop)
    task = load_task(f"fgvc:{folder}", image_size=28, progress=False)
    store = fgvc_store_size(28)
    assert store == 32
    identity = Normalizer((0.0,), (1 / 255,), image_size=28)  # only the centre crop
    for split in ("train", "val", "test"):
        s = task.splits[split]
        assert s.images.shape == (len(SHAPES[split]), 3, store, store)
        evaluated = identity(s.images)
        for i, path in enumerate(files[split]):
            full = resized_shorter_side(path, store)
            assert torch.equal(s.images[i], centre_crop(full, store))
            before = read_image(path, store, keep_aspect=True)  # the squares' old decoder
            assert torch.equal(s.images[i], torch.from_numpy(before.copy()).permute(2, 0, 1))
            reference = centre_crop(full, 28).float()
            assert (evaluated[i] - reference).abs().max() <= 1
            if s.crops is not None:
                assert torch.equal(s.crops[i], full)
    assert task.splits["test"].crops is None  # evaluated only: the squares suffice


def test_fgvc_random_crops_repeat_with_the_seed(tmp_path: Path) -> None:
    from e2vpt.data.augment import augment_batch, random_crops_flip

    folder = tmp_path / "NABirds"
    write_fgvc_shapes(folder)
    task = load_task(f"fgvc:{folder}", image_size=32, progress=False)
    train = task.splits["train"]
    idx = torch.tensor([2, 0, 1, 0, 2, 1, 1, 0])

    def draw(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.cat(
            [augment_batch(task.augment, train.images, train.crops, idx, g, 32) for _ in range(3)]
        )

    assert torch.equal(draw(5), draw(5))
    assert not torch.equal(draw(5), draw(6))
    # the generator is consumed the same whatever the images' sizes
    a, b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    random_crops_flip([train.crops[0]] * 4, a, 32)
    random_crops_flip([train.crops[2]] * 4, b, 32)
    assert torch.equal(a.get_state(), b.get_state())
    # without crops (or another augmentation) it is apply_augment on the dense squares
    from e2vpt.data.augment import apply_augment

    for name, crops in (("random-crop-flip", None), ("flip", train.crops)):
        got = augment_batch(name, train.images, crops, idx, torch.Generator().manual_seed(2), 32)
        want = apply_augment(name, train.images[idx], torch.Generator().manual_seed(2), 32)
        assert torch.equal(got, want)


def test_fgvc_trainval_carries_crops(tmp_path: Path) -> None:
    from e2vpt.data.augment import augment_batch

    folder = tmp_path / "OxfordFlowers"
    write_fgvc_shapes(folder)
    task = load_task(f"fgvc:{folder}", image_size=32, progress=False)
    train, val = task.splits["train"], task.splits["val"]
    trainval = task.split(TRAINVAL)
    assert trainval.crops is not None and len(trainval.crops) == len(trainval) == 5
    for got, want in zip(trainval.crops, train.crops + val.crops, strict=True):
        assert torch.equal(got, want)
    out = augment_batch(
        task.augment, trainval.images, trainval.crops, torch.arange(5), torch.Generator(), 32
    )
    assert out.shape == (5, 3, 32, 32)
    for i in range(5):
        assert window_offsets(out[i], trainval.crops[i])


def test_fgvc_square_images_crop_inside_themselves(tmp_path: Path) -> None:
    from e2vpt.data.augment import augment_batch

    folder = tmp_path / "StanfordDogs"
    write_fgvc_shapes(folder)
    task = load_task(f"fgvc:{folder}", image_size=32, progress=False)
    train = task.splits["train"]
    square = train.crops[2]
    assert torch.equal(square, train.images[2])  # the aspect-kept image is the square
    generator = torch.Generator().manual_seed(0)
    out = augment_batch(task.augment, train.images, train.crops, [2] * 300, generator, 32)
    offsets = {window_offsets(crop, square)[0] for crop in out}
    assert offsets == {(r, c) for r in range(6) for c in range(6)}


def test_lt_profile_matches_the_standard_set_sizes() -> None:
    # the sizes every CIFAR-100-LT paper quotes for ρ = 100 / 50 / 10
    assert sum(lt_class_counts(100)) == 10847
    assert sum(lt_class_counts(50)) == 12608
    assert sum(lt_class_counts(10)) == 19573
    counts = lt_class_counts(100)
    assert counts[0] == 500 and counts[-1] == 5
    assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))


def write_cifar100(folder: Path, per_class: int = 20, test_per_class: int = 3) -> None:
    """The cifar-100-python layout: pickled dicts with bytes keys, N×3072 uint8 rows."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for name, n in (("train", per_class), ("test", test_per_class)):
        labels = np.tile(np.arange(100), n)  # interleaved, as the real file is shuffled
        batch = {
            b"data": rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8),
            b"fine_labels": labels.tolist(),
            b"coarse_labels": (labels // 5).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"fine_label_names": [f"class{i}".encode() for i in range(100)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))


def test_cifar100_lt_follows_the_profile_with_a_balanced_test(tmp_path: Path) -> None:
    write_cifar100(tmp_path / "cifar-100-python")
    task = load_task(f"cifar100-lt10:{tmp_path / 'cifar-100-python'}", 32, progress=False)
    assert task.metric == "error" and task.classes[3] == "class3"
    expected = lt_class_counts(10, n_max=20)
    trainval = torch.bincount(task.split(TRAINVAL).labels, minlength=100).tolist()
    assert trainval == expected
    val = torch.bincount(task.split("val").labels, minlength=100).tolist()
    assert val == [n // 10 for n in expected]
    assert len(task.split("train")) + len(task.split("val")) == sum(expected)
    assert torch.bincount(task.split("test").labels).tolist() == [3] * 100
    again = load_task(f"cifar100-lt10:{tmp_path / 'cifar-100-python'}", 32, progress=False)
    assert torch.equal(again.split("train").images, task.split("train").images)


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo owned",))


def test_cifar100_lt_refuses_foreign_pickles_and_bad_specs(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    write_cifar100(folder)
    (folder / "train").write_bytes(pickle.dumps({b"data": _Evil()}))
    with pytest.raises(DataError, match="refusing to load"):
        load_task(f"cifar100-lt100:{folder}", 32, progress=False)
    with pytest.raises(DataError, match="cifar100-lt<ρ>"):
        load_task(f"cifar100-lt:{folder}", 32)
    with pytest.raises(DataError, match="does not exist"):
        load_task(f"cifar100-lt50:{tmp_path / 'none'}", 32)
