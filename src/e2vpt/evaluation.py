"""Scoring a trained run folder on a dataset: ``e2vpt.evaluate(run_dir)`` (and ``e2vpt
eval``). The data defaults to the run's own, with the validation split it held out; a
dataset whose class names differ from the run's is refused, since label i must mean the
same class in both."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from e2vpt.data.spec import DataSpec
from e2vpt.devices import DEVICE_CHOICES
from e2vpt.errors import CheckpointError, ConfigError
from e2vpt.files import atomic_write_text
from e2vpt.settings import setting


@dataclass(frozen=True)
class EvalResult:
    run: str
    method: str
    data: str
    split: str
    images: int
    top1: float  # a fraction (0.873), not a percentage

    def table_row(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "top1"}, **self._percent()}

    def _percent(self) -> dict[str, float]:
        return {"top-1 %": round(100 * self.top1, 2)}


@dataclass(frozen=True)
class EvalSettings:
    """How ``evaluate`` scores a run (every field is a flag of ``e2vpt eval``)."""

    data: str | None = setting(None, "task to evaluate on (default: the run's own)")
    split: str = setting("test", "the task split to score")
    batch_size: int = setting(256, "images per forward")
    device: str = setting("auto", DEVICE_CHOICES)
    weights: str | None = setting(
        None,
        "the backbone's weights file, when the path the run stored does not hold it here "
        "(a run made on another machine)",
    )
    precision: str = setting("auto", "auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16")
    ignore_class_names: bool = setting(
        False,
        "score even when the data's class names differ from the run's (labels are then "
        "taken to mean the same classes by position)",
    )


def evaluate(
    run_dir: str | os.PathLike[str], settings: EvalSettings | None = None, **options: Any
) -> EvalResult:
    """Top-1 of a finished run on ``settings.data`` (default: the task it was trained
    on); ``options`` override single settings: ``evaluate(run, split="val")``."""
    settings = replace(settings or EvalSettings(), **options)
    from e2vpt.backbones import backbone_for_run
    from e2vpt.checkpoint import load
    from e2vpt.data import load_task
    from e2vpt.inference import model_data_settings, resolve_device, top1
    from e2vpt.runs import read_adapter_config, require_complete

    run_dir = Path(run_dir)
    require_complete(run_dir, "evaluate")
    meta = read_adapter_config(run_dir)
    data, data_seed, val_fraction = _data_for(run_dir, settings.data)
    torch_device = resolve_device(settings.device)
    model = load(run_dir, backbone=backbone_for_run(meta, settings.weights, run_dir))
    image_size, normalizer = model_data_settings(model)
    task = load_task(data, image_size, seed=data_seed, val_fraction=val_fraction)
    if task.num_classes != meta["num_classes"]:
        raise CheckpointError(
            f"{data} has {task.num_classes} classes but the checkpoint in {run_dir} has a "
            f"{meta['num_classes']}-class head; evaluate on the task it was trained for"
        )
    check_class_names(model.class_names, task.classes, data, run_dir, settings.ignore_class_names)
    model = model.to(torch_device)
    split = task.split(settings.split)
    accuracy = top1(
        model,
        split,
        normalizer.to(torch_device),
        torch_device,
        settings.precision,
        settings.batch_size,
    )
    return EvalResult(
        run=str(run_dir),
        method=meta["method"],
        data=data,
        split=settings.split,
        images=len(split),
        top1=accuracy,
    )


def _data_for(run_dir: Path, data: str | None) -> tuple[str, int, float | None]:
    """The data to score on, its generator seed and the val share it holds out: a run's
    own data is split as it was in training, so ``val`` is the val it held out."""
    from e2vpt.runs import TRAIN_CONFIG_FILE, has_train_config, read_train_config

    if not has_train_config(run_dir):
        if data is None:
            raise ConfigError(
                f"{run_dir} has no {TRAIN_CONFIG_FILE}; set `data` to the data to score on"
            )
        return data, 0, None
    run_cfg = read_train_config(run_dir)
    data = data or run_cfg.data
    own = str(DataSpec.parse(data).absolute()) == run_cfg.data
    return data, run_cfg.data_seed, run_cfg.val_fraction if own else None


def check_class_names(
    trained: list[str] | None,
    given: list[Any],
    data: str,
    run_dir: Path,
    ignore_class_names: bool = False,
) -> None:
    """Label i must mean the same class in the data as in the run."""
    if trained is None:
        from e2vpt.notices import note

        note(
            f"{run_dir} stores no class names (saved before e2vpt stored them); assuming "
            f"{data}'s labels mean the run's classes"
        )
        return
    names = [str(c) for c in given]
    if names == trained or ignore_class_names:
        return
    index = next(i for i, (a, b) in enumerate(zip(trained, names, strict=True)) if a != b)
    raise CheckpointError(
        f"{data}'s classes are not the ones {run_dir} was trained on (label {index}: "
        f"{names[index]!r} here, {trained[index]!r} in the run); evaluate on the run's own "
        "classes, or set `ignore_class_names` to score by label position anyway"
    )


def write_eval_result(result: EvalResult) -> Path:
    """``RUN_DIR/eval_<data>_<split>.json``: named by dataset and split, so evaluating on
    other data never replaces a result."""
    import json

    from e2vpt.runs import eval_result_file

    path = Path(result.run) / eval_result_file(DataSpec.parse(result.data).label(), result.split)
    atomic_write_text(path, json.dumps(result.table_row(), indent=2) + "\n")
    return path
