"""Image folders that say what they hold: images at any depth, empty or missing class
folders refused, missing splits noted, a seeded stratified val hold-out, and the summary
line every load prints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from e2vpt.data import DataError, check_task_spec, load_task
from tests.conftest import write_vtab_tree


def write_image(path: Path, seed: int) -> np.ndarray:
    """A lossless 8×8 PNG of random pixels; returns its pixels (H×W×3)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def write_tree(root: Path, layout: dict[str, dict[str, int]]) -> None:
    seed = 0
    for split, classes in layout.items():
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                write_image(root / split / cls / f"{i:02d}.png", seed)
                seed += 1


def chw(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(2, 0, 1)


def test_images_are_found_at_any_depth_sorted_and_hidden_ones_skipped(tmp_path: Path) -> None:
    cat = tmp_path / "train" / "cat"
    want = {
        "a/b/deep.png": write_image(cat / "a" / "b" / "deep.png", 1),
        "a/mid.png": write_image(cat / "a" / "mid.png", 2),
        "top.PNG": write_image(cat / "top.PNG", 3),
    }
    write_image(cat / ".hidden" / "skip.png", 4)  # a hidden folder
    write_image(cat / ".skip.png", 5)  # a hidden file
    (cat / "notes.txt").write_text("not an image")
    dog = write_image(tmp_path / "train" / "dog" / "x" / "y" / "z.jpg", 6)
    write_image(tmp_path / "train" / ".ipynb_checkpoints" / "c.png", 7)  # no class
    task = load_task(str(tmp_path), 8, progress=False, quiet=True)
    assert task.classes == ["cat", "dog"]
    train = task.splits["train"]
    assert train.labels.tolist() == [0, 0, 0, 1]
    for i, rel in enumerate(sorted(want)):  # sorted paths: a/b/deep, a/mid, top
        assert torch.equal(train.images[i], chw(want[rel]))
    assert train.images[3].shape == dog.transpose(2, 0, 1).shape  # a JPEG: lossy


def test_an_empty_class_folder_is_an_error_naming_every_one(tmp_path: Path) -> None:
    write_tree(tmp_path, {"train": {"cat": 2, "dog": 2}, "val": {"cat": 1, "dog": 1}})
    (tmp_path / "train" / "cow" / "sub").mkdir(parents=True)  # folders, no image
    (tmp_path / "train" / "cow" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"train/cow holds no images .*remove the folder") as err:
        load_task(str(tmp_path), 8, progress=False, quiet=True)
    assert "\n" not in str(err.value)
    (tmp_path / "val" / "cow").mkdir()
    (tmp_path / "val" / "dog" / "00.png").unlink()
    with pytest.raises(DataError, match=r"train/cow, val/cow, val/dog hold no images"):
        load_task(str(tmp_path), 8, progress=False, quiet=True)


def test_splits_must_hold_the_same_classes(tmp_path: Path) -> None:
    write_tree(tmp_path, {"train": {"cat": 2, "dog": 2, "emu": 1}, "val": {"cat": 1}})
    with pytest.raises(DataError, match=r"val lacks class folders that train/ has: dog, emu"):
        load_task(str(tmp_path), 8, progress=False, quiet=True)
    write_tree(tmp_path, {"val": {"dog": 1, "emu": 1}, "test": {"cat": 1, "dog": 1}})
    with pytest.raises(DataError, match=r"test lacks class folders that train/ has: emu"):
        load_task(str(tmp_path), 8, progress=False, quiet=True)
    write_tree(tmp_path, {"test": {"emu": 1, "yak": 1}})
    with pytest.raises(DataError, match=r"classes \['yak'\] that train/ does not have"):
        load_task(str(tmp_path), 8, progress=False, quiet=True)


def test_missing_splits_are_said_once_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_tree(tmp_path, {"train": {"cat": 2, "dog": 2}})
    load_task(str(tmp_path), 8, progress=False)
    err = capsys.readouterr().err
    assert f"e2vpt: {tmp_path} has no val/ split: no held-out metric" in err
    assert "`val_fraction` F" in err
    assert f"e2vpt: {tmp_path} has no test/ split" in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("e2vpt: data: ")  # notes first, then the summary
    load_task(str(tmp_path), 8, progress=False)  # the same process: not said again
    assert "has no val/" not in capsys.readouterr().err
    write_tree(tmp_path, {"val": {"cat": 1, "dog": 1}, "test": {"cat": 1, "dog": 1}})
    load_task(str(tmp_path), 8, progress=False)
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("e2vpt: data: ")  # the summary alone


def test_val_fraction_holds_out_a_stratified_seeded_part_of_train(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_tree(
        tmp_path, {"train": {"a": 20, "b": 9, "c": 2, "d": 1}, "test": {x: 1 for x in "abcd"}}
    )
    whole = load_task(str(tmp_path), 8, progress=False, quiet=True).splits["train"]
    capsys.readouterr()
    task = load_task(str(tmp_path), 8, seed=0, progress=False, val_fraction=0.25)
    err = capsys.readouterr().err
    train, val = task.splits["train"], task.splits["val"]
    # round(0.25 n): 20 → 5, 9 → 2 (2.25), 2 → 1 (at least one), 1 → 0 (its only image)
    assert torch.bincount(val.labels, minlength=4).tolist() == [5, 2, 1, 0]
    assert torch.bincount(train.labels, minlength=4).tolist() == [15, 7, 1, 1]
    assert f"{tmp_path}: held out 25 % of train as val: 8 images, stratified, seed 0" in err
    assert "has no val/" not in err
    assert "train 24, val 8, test 4" in err
    # a partition of the old train: every image lands in exactly one of the two
    rows = {tuple(x.flatten().tolist()) for x in torch.cat([train.images, val.images])}
    assert rows == {tuple(x.flatten().tolist()) for x in whole.images}
    again = load_task(str(tmp_path), 8, seed=0, progress=False, val_fraction=0.25, quiet=True)
    other = load_task(str(tmp_path), 8, seed=1, progress=False, val_fraction=0.25, quiet=True)
    assert torch.equal(again.splits["val"].images, val.images)
    assert not torch.equal(other.splits["val"].images, val.images)
    assert torch.equal(other.splits["val"].labels, val.labels)  # the same strata


def test_val_fraction_errors_name_the_fix(tmp_path: Path) -> None:
    write_tree(tmp_path, {"train": {"a": 2}, "val": {"a": 1}})
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(DataError, match=f"between 0 and 1, got {bad}"):
            load_task(str(tmp_path), 8, val_fraction=bad, quiet=True)
        with pytest.raises(DataError, match="between 0 and 1"):
            check_task_spec(str(tmp_path), val_fraction=bad)
    for check in (
        lambda: load_task(str(tmp_path), 8, val_fraction=0.1, quiet=True),
        lambda: check_task_spec(str(tmp_path), val_fraction=0.1),
    ):
        with pytest.raises(DataError, match="drop `val_fraction` to use val/, or remove val/"):
            check()
    vtab = tmp_path / "dtd"
    write_vtab_tree(vtab, {"train800": 2, "val200": 1, "test": 1}, num_classes=47)
    for spec in ("builtin:count", f"vtab:{vtab}", f"fgvc:{tmp_path}", f"cifar100-lt10:{tmp_path}"):
        with pytest.raises(DataError, match="its protocol's own val split"):
            load_task(spec, 8, val_fraction=0.1, quiet=True)
        with pytest.raises(DataError, match="its protocol's own val split"):
            check_task_spec(spec, val_fraction=0.1)
    single = tmp_path / "single"
    write_tree(single, {"train": {"a": 1, "b": 1}})
    with pytest.raises(DataError, match="holds out no image: every class .* single image"):
        load_task(str(single), 8, val_fraction=0.5, quiet=True)


def test_every_load_prints_one_summary_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_tree(tmp_path / "pets", {"train": {"cat": 3, "dog": 2}, "val": {"cat": 1, "dog": 1}})
    load_task(str(tmp_path / "pets"), 8, progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3  # the missing test split's note, the small classes', the summary
    assert err[1].endswith(
        "cat (3), dog (2) have fewer than 5 training images; their accuracy is noise (add images)"
    )
    assert err[2].startswith("e2vpt: data: pets — 2 classes (cat, dog); train 5, val 2, test — (")
    assert "decoded once to the cache at" in err[2]
    load_task("builtin:position", 8)
    err = capsys.readouterr().err.strip()
    assert err.startswith("e2vpt: data: position — 9 classes (cell_00, cell_01,")
    assert err.endswith("; train 800, val 200, test 1000 (generated)")
    vtab = tmp_path / "dtd"
    write_vtab_tree(vtab, {"train800": 4, "val200": 2, "test": 3}, num_classes=47)
    load_task(f"vtab:{vtab}", 8, progress=False)
    err = capsys.readouterr().err.strip()
    assert err.startswith("e2vpt: data: dtd — 47 classes; train 4, val 2, test 3 (")
    load_task(f"vtab:{vtab}", 8, progress=False, quiet=True)
    load_task(str(tmp_path / "pets"), 8, progress=False, quiet=True)
    assert capsys.readouterr().err == ""


def test_one_class_is_refused_before_any_work(
    tmp_path: Path, data_cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One class scores 100 % without learning: refused in the cheap pre-check (before
    the backbone, before decoding), for every format in load_task."""
    from e2vpt.cli.main import main

    write_tree(tmp_path / "one", {"train": {"cat": 6}, "val": {"cat": 2}})
    message = "train has 1 class (cat); classification needs at least 2: add a train/<class>/"
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_task_spec(str(tmp_path / "one"))
    with pytest.raises(DataError, match="classification needs at least 2"):
        load_task(str(tmp_path / "one"), 8, progress=False, quiet=True)
    run = tmp_path / "run"
    argv = ["train", "--data", str(tmp_path / "one"), "--output-dir", str(run), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("e2vpt train: error: ") and message in err[0]
    assert not run.exists() and not any(data_cache_dir.iterdir())  # nothing decoded
    # a format whose classes come from its labels: all of one label
    vtab = tmp_path / "mytask"  # not a VTAB-1k name: its classes are its labels
    write_vtab_tree(vtab, {"train800": 3, "val200": 1, "test": 1}, num_classes=1)
    with pytest.raises(DataError, match=r"data vtab:.*mytask has 1 class \(0\); classific"):
        load_task(f"vtab:{vtab}", 8, progress=False, quiet=True)


def test_a_class_with_few_training_images_is_noted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_tree(tmp_path / "pets", {"train": {"cat": 5, "cow": 1, "dog": 4}})
    load_task(str(tmp_path / "pets"), 8, progress=False)
    notes = [line for line in capsys.readouterr().err.splitlines() if "fewer than" in line]
    assert notes == [
        f"e2vpt: {tmp_path / 'pets'}: cow (1), dog (4) have fewer than 5 training images; "
        "their accuracy is noise (add images)"
    ]
