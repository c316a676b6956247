"""Classify new images with a finished run: ``e2vpt predict`` and :class:`Predictor`.

Images are decoded and resized the way the run's evaluation saw them: a plain resize to
the input size (VTAB-1k, image folders, built-in tasks), or FGVC's shorter side to
256/224 of it and the central crop. Unreadable images are reported and skipped."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from e2vpt.backbones import backbone_for_run
from e2vpt.checkpoint import load
from e2vpt.data import IMAGE_EXTENSIONS
from e2vpt.data.core import read_image, resize_image
from e2vpt.data.fgvc import fgvc_store_size
from e2vpt.data.formats import FGVC
from e2vpt.data.spec import DataSpec
from e2vpt.errors import DataError
from e2vpt.inference import autocast, model_data_settings, resolve_device
from e2vpt.notices import note
from e2vpt.predict_settings import PredictSettings
from e2vpt.runs import (
    TRAIN_CONFIG_FILE,
    has_train_config,
    read_adapter_config,
    read_train_config,
    require_complete,
)

# how a run's evaluation resized images, by the prefix of its data spec
RESIZE_PLAIN, RESIZE_FGVC = "resize", "fgvc"


@dataclass
class Prediction:
    """One image's top-k classes (names in the run's label order) and probabilities."""

    path: str
    classes: list[str]
    probabilities: list[float]
    labels: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "top_classes": self.classes,
            "top_probabilities": [round(p, 6) for p in self.probabilities],
            "top_labels": self.labels,
        }


@dataclass
class Failure:
    path: str
    reason: str


def find_images(inputs: Sequence[str]) -> list[Path]:
    """Image files from files, folders (searched at any depth) and glob patterns, in the
    order given (a folder's images sorted); an input that names nothing is an error."""
    found: list[Path] = []
    for spec in inputs:
        path = Path(spec)
        if path.is_dir():
            found.extend(
                Path(root) / name
                for root, dirs, names in sorted(os.walk(path, followlinks=True))
                for name in sorted(names)
                if not name.startswith(".")
                and Path(name).suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in Path(root).relative_to(path).parts)
            )
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(spec):
            matches = sorted(Path(p) for p in glob.glob(spec, recursive=True))
            files = [p for p in matches if p.is_file()]
            if not files:
                raise DataError(f"no file matches {spec!r}; check the pattern (quote it)")
            found.extend(files)
        else:
            raise DataError(f"{spec} does not exist; give image files, folders or globs")
    if not found:
        raise DataError(
            f"no images in {', '.join(inputs)} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return found


class Predictor:
    """A run folder's model, ready to classify images: ``Predictor("runs/pets")``.

    ``predict(images)`` takes paths, PIL images or uint8 arrays (H×W×3) and returns one
    :class:`Prediction` per image; ``predict_files`` also reports unreadable files."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        settings: PredictSettings | None = None,
        backbone: torch.nn.Module | None = None,
        **options: Any,
    ) -> None:
        """``options`` override single settings: ``Predictor(run, device="cpu")``."""
        settings = replace(settings or PredictSettings(), **options)
        settings.validate()
        self.settings = settings
        self.run_dir = Path(run_dir)
        require_complete(self.run_dir, "predict with")
        # every file of the folder is read and checked before the model is built
        meta = read_adapter_config(self.run_dir)
        data = read_train_config(self.run_dir).data if has_train_config(self.run_dir) else None
        self.device = resolve_device(settings.device)
        self.batch_size = settings.batch_size
        self.precision = settings.precision
        if backbone is None:  # `weights`: for a run made where its stored path is not here
            backbone = backbone_for_run(meta, settings.weights, self.run_dir)
        self.model = load(self.run_dir, backbone=backbone).to(self.device).eval()
        self.image_size, normalizer = model_data_settings(self.model)
        self.normalizer = normalizer.to(self.device)
        fgvc = bool(data) and DataSpec.parse(data).kind == FGVC
        self.resize = RESIZE_FGVC if fgvc else RESIZE_PLAIN
        if data is None:
            note(
                f"{self.run_dir} has no {TRAIN_CONFIG_FILE}: images are resized to "
                f"{self.image_size}×{self.image_size} (the VTAB / image-folder protocol)"
            )
        names = self.model.class_names
        num_classes = int(meta["num_classes"])
        if names is None:
            names = [f"class_{i}" for i in range(num_classes)]
            note(
                f"{self.run_dir} was saved without class names: classes are named "
                "class_0 … by label"
            )
        self.classes = list(names)
        self.top_k = min(settings.top_k, num_classes)

    def decode(self, image: str | os.PathLike[str] | Image.Image | np.ndarray) -> np.ndarray:
        """One image → the uint8 H×W×3 array the run's evaluation would see."""
        if isinstance(image, (str, os.PathLike)):
            return self._read(Path(image))
        if isinstance(image, Image.Image):
            return self._resize(image)
        else:
            array = np.asarray(image)
            if array.ndim == 2:
                array = np.repeat(array[..., None], 3, axis=-1)
            if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
                raise DataError(
                    f"an image array must be uint8 H×W×3 (or H×W), got {array.dtype} "
                    f"{tuple(array.shape)}"
                )
        return self._resize(Image.fromarray(array))

    def _read(self, path: Path) -> np.ndarray:
        size, keep_aspect = self._geometry()
        return read_image(path, size, keep_aspect)

    def _resize(self, image: Image.Image) -> np.ndarray:
        return resize_image(image, *self._geometry())

    def _geometry(self) -> tuple[int, bool]:
        if self.resize == RESIZE_FGVC:  # the central crop to the input size: normalizer
            return fgvc_store_size(self.image_size), True
        return self.image_size, False

    @torch.no_grad()
    def logits(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """Decoded images (uint8 H×W×3) → logits, in batches."""
        out = []
        for start in range(0, len(arrays), self.batch_size):
            chunk = np.stack(arrays[start : start + self.batch_size])
            x = torch.from_numpy(chunk).permute(0, 3, 1, 2).to(self.device)
            with autocast(self.device, self.precision):
                out.append(self.model(self.normalizer(x)).float().cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.classes))

    def _rank(self, logits: torch.Tensor, paths: Sequence[str]) -> list[Prediction]:
        probs = logits.softmax(dim=-1)
        top = probs.topk(self.top_k, dim=-1)
        return [
            Prediction(
                path=path,
                classes=[self.classes[i] for i in idx.tolist()],
                probabilities=p.tolist(),
                labels=idx.tolist(),
            )
            for path, p, idx in zip(paths, top.values, top.indices, strict=True)
        ]

    def predict(
        self, images: Iterable[str | os.PathLike[str] | Image.Image | np.ndarray]
    ) -> list[Prediction]:
        """Top-k classes of each image (an unreadable one raises :class:`DataError`)."""
        items = list(images)
        arrays = [self.decode(image) for image in items]
        paths = [str(x) if isinstance(x, (str, os.PathLike)) else f"<image {i}>"
                 for i, x in enumerate(items)]  # fmt: skip
        return self._rank(self.logits(arrays), paths)

    def predict_files(
        self, paths: Sequence[Path], progress: bool = False
    ) -> Iterator[Prediction | Failure]:
        """Each file's prediction, or a :class:`Failure` naming why it was skipped."""
        from e2vpt.progressbars import progress_bar

        bar = progress_bar(total=len(paths), unit="img", desc="predict", show=progress)
        try:
            for start in range(0, len(paths), self.batch_size):
                arrays, kept = [], []
                for path in paths[start : start + self.batch_size]:
                    try:
                        arrays.append(self._read(path))
                        kept.append(str(path))
                    except DataError as err:
                        yield Failure(str(path), str(err))
                if arrays:
                    yield from self._rank(self.logits(arrays), kept)
                bar.update(len(paths[start : start + self.batch_size]))
        finally:
            bar.close()


def throughput(count: int, seconds: float) -> str:
    return f"{count} images in {seconds:.1f} s ({count / max(seconds, 1e-9):.1f} img/s)"
