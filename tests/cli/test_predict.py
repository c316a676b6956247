"""`e2vpt predict` and `e2vpt.Predictor`: the images a run's evaluation sees, the
class names stored with the run, and bad input that never loses the other images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from e2vpt.cli.main import main
from e2vpt.data import load_task
from e2vpt.data.synthetic import generate_split
from e2vpt.predict import Predictor


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An image-folder task (train/ and test/, class folders) and a linear run on it."""
    root = tmp_path_factory.mktemp("predict")
    data = root / "data"
    for split, size in (("train", 90), ("test", 45)):
        images, labels, classes = generate_split("position", split, seed=0, size=size)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = data / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            # a larger image than the input, so the resize is part of what is compared
            Image.fromarray(image).resize((45, 45)).save(folder / f"{i:03d}.png")
    run = root / "run"
    argv = ["train", "--method", "vpt-shallow", "--data", str(data), "--epochs", "2"]
    assert main([*argv, "--output-dir", str(run), "--no-progress"]) == 0
    return data, run


def test_predict_sees_what_eval_sees(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = trained
    predictor = Predictor(run, device="cpu")
    task = load_task(f"{data}", predictor.image_size)
    test = task.split("test")
    files = sorted((data / "test").rglob("*.png"))
    decoded = np.stack([predictor.decode(f) for f in files])
    assert torch.equal(torch.from_numpy(decoded).permute(0, 3, 1, 2), test.images)
    # the command's top-1 gives eval's accuracy, image by image
    out = tmp_path / "preds.csv"
    assert main(["predict", str(run), str(data / "test"), "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == [str(f) for f in files]
    predicted = [task.classes.index(r["class_1"]) for r in rows]
    with torch.no_grad():
        logits = predictor.model(predictor.normalizer(test.images))
    assert predicted == logits.argmax(-1).tolist()
    assert main(["eval", str(run)]) == 0
    score = json.loads(next(run.glob("eval_*_test.json")).read_text())["top-1 %"]
    accuracy = 100 * np.mean(np.array(predicted) == test.labels.numpy())
    assert score == pytest.approx(accuracy, abs=0.01)
    # probabilities are sorted and the Python API takes arrays and PIL images alike
    probabilities = [float(rows[0][f"p_{i}"]) for i in range(1, 6)]
    assert probabilities == sorted(probabilities, reverse=True)
    with Image.open(files[0]) as image:
        from_pil, from_array = predictor.predict([image, np.asarray(image.convert("RGB"))])
    assert from_pil.classes == from_array.classes == [rows[0][f"class_{i}"] for i in range(1, 6)]


def test_bad_images_are_skipped_and_files_never_replaced(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = trained
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = sorted((data / "test").rglob("*.png"))[:3]
    for f in good:
        (inputs / f.name).write_bytes(f.read_bytes())
    (inputs / "broken.png").write_text("not an image")
    out = tmp_path / "preds.jsonl"
    assert main(["predict", str(run), str(inputs), "--output", str(out), "--top-k", "2"]) == 1
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.png" in err and "1 image(s) could not be read" in err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3 and all(len(x["top_classes"]) == 2 for x in lines)
    before = out.read_text()
    assert main(["predict", str(run), str(inputs / "*.png"), "--output", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == before
    for argv, message in (
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(tmp_path / "*.jpeg")], "no file matches"),
        ([str(inputs), "--output", str(tmp_path / "p.txt")], "name a .csv or .jsonl"),
        ([str(inputs), "--top-k", "0"], "--top-k must be >= 1"),
    ):
        assert main(["predict", str(run), *argv]) == 2
        assert message in capsys.readouterr().err


def test_runs_without_class_names_get_numbered_classes(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, run = trained
    old = tmp_path / "old"
    old.mkdir()
    for f in run.iterdir():
        if f.is_file():
            (old / f.name).write_bytes(f.read_bytes())
    meta = json.loads((old / "adapter.json").read_text())
    del meta["class_names"]  # as runs saved before e2vpt stored them
    (old / "adapter.json").write_text(json.dumps(meta))
    image = next((run.parent / "data" / "test").rglob("*.png"))
    assert main(["predict", str(old), str(image), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "class_" in captured.out and "saved without class names" in captured.err
