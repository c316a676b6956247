"""Built-in tasks and image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from e2vpt.data import DataError, builtin_tasks, load_task


@pytest.mark.parametrize("name", builtin_tasks())
def test_builtin_tasks_are_deterministic_with_vtab_sizes(name: str) -> None:
    a = load_task(name, image_size=32, seed=0)
    b = load_task(name, image_size=32, seed=0)
    c = load_task(name, image_size=32, seed=1)
    assert {k: len(v) for k, v in a.splits.items()} == {"train": 800, "val": 200, "test": 1000}
    assert torch.equal(a.splits["train"].images, b.splits["train"].images)
    assert not torch.equal(a.splits["train"].images, c.splits["train"].images)
    assert not torch.equal(a.splits["train"].images[:200], a.splits["val"].images)
    counts = torch.bincount(a.splits["train"].labels, minlength=a.num_classes)
    assert counts.min() > 800 / a.num_classes / 2  # every class is well represented


def test_builtin_task_resizes_to_the_backbone_input() -> None:
    task = load_task("builtin:count", image_size=64)
    assert task.splits["val"].images.shape == (200, 3, 64, 64)
    assert task.splits["val"].images.dtype == torch.uint8


def write_folder(root: Path, splits: dict[str, dict[str, int]]) -> None:
    rng = np.random.default_rng(0)
    for split, classes in splits.items():
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")


def test_image_folder_splits_and_labels(tmp_path: Path) -> None:
    write_folder(tmp_path, {"train": {"cat": 3, "dog": 2}, "test": {"cat": 1, "dog": 2}})
    task = load_task(str(tmp_path), image_size=32, progress=False)
    assert task.classes == ["cat", "dog"]
    assert task.splits["train"].labels.tolist() == [0, 0, 0, 1, 1]
    assert task.splits["test"].labels.tolist() == [0, 1, 1]
    assert "val" not in task.splits
    assert task.splits["train"].images.shape == (5, 3, 32, 32)


def test_image_folder_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_task(str(tmp_path / "nope"), image_size=32)
    with pytest.raises(DataError, match="no train/ folder"):
        load_task(str(tmp_path), image_size=32)
    write_folder(tmp_path, {"train": {"cat": 1, "dog": 1}, "val": {"cow": 1}})
    with pytest.raises(DataError, match=r"classes \['cow'\]"):
        load_task(str(tmp_path), image_size=32, progress=False)
    broken = tmp_path / "b"
    write_folder(broken, {"train": {"cat": 1, "dog": 1}})
    (broken / "train" / "cat" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.jpg"):
        load_task(str(broken), image_size=32, progress=False)
    with pytest.raises(DataError, match="unknown built-in task"):
        load_task("builtin:colour", image_size=32)


def test_random_crop_flip_takes_input_sized_windows_and_eval_takes_the_centre() -> None:
    from e2vpt.data.augment import random_crop_flip
    from e2vpt.inference import Normalizer

    x = torch.arange(2 * 5 * 5, dtype=torch.uint8).view(2, 1, 5, 5)
    out = random_crop_flip(x, torch.Generator().manual_seed(0), 3)
    assert out.shape == (2, 1, 3, 3)
    for i in range(2):
        windows = [x[i, :, r : r + 3, c : c + 3] for r in range(3) for c in range(3)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
    centre = Normalizer((0.0,), (1 / 255,), image_size=3)(x)
    assert torch.equal(centre, x[..., 1:4, 1:4].float())
