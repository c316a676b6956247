"""The config resolved once: no ``auto`` left, and training never resolves it again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import e2vpt.training.trainer as trainer
from e2vpt.data import Task
from e2vpt.training.config import ResolvedTrainConfig, TrainConfig
from e2vpt.training.session import TrainHooks
from e2vpt.training.trainer import train
from tests.conftest import small_builtin_task

RESOLVERS = (
    "resolved",
    "resolved_optimizer",
    "resolved_base_lr",
    "resolved_warmup_epochs",
    "build_method_config",
)


@pytest.fixture(scope="module")
def small_task() -> Task:
    return small_builtin_task("position", (64, 32, 32))


def tiny(tmp_path: Path, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = dict(
        output_dir=str(tmp_path), epochs=2, warmup_epochs=1, batch_size=32, progress=False
    )
    return TrainConfig(**{**values, **overrides})


@pytest.mark.parametrize(
    "values",
    [
        {"method": "e2vpt"},
        {"method": "full"},
        {"method": "linear", "optimizer": "adamw", "warmup_epochs": 3},
        {"recipe": "official", "method": "vpt-deep", "base_lr": 0.5, "augment": "flip"},
    ],
)
def test_every_auto_is_settled_as_the_configs_own_methods_say(values: dict[str, Any]) -> None:
    cfg = TrainConfig(**values)
    run = cfg.resolve()
    assert isinstance(run, ResolvedTrainConfig) and run.config is cfg
    assert run.method == cfg.build_method_config()
    assert run.optimizer == cfg.resolved_optimizer()
    assert run.base_lr == cfg.resolved_base_lr()
    assert run.lr == cfg.resolved_base_lr() * cfg.batch_size / 256
    assert run.warmup_epochs == cfg.resolved_warmup_epochs()
    for name in ("lr_schedule_unit", "head_init", "normalize"):
        assert getattr(run, name) == cfg.resolved(name) != "auto"
    assert run.augment_for("random-crop-flip") == values.get("augment", "random-crop-flip")


def test_training_reads_the_resolved_config_alone(
    tmp_path: Path, small_task: Task, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After preflight nothing climbs back to the config to resolve it again."""
    cfg = tiny(tmp_path / "run", method="e2vpt", method_config={"visual_tokens": 2})
    run = trainer.preflight(cfg, data=False)
    monkeypatch.setattr(trainer, "preflight", lambda *_args, **_kwargs: run)
    for name in RESOLVERS:

        def refuse(*_args: object, _name: str = name, **_kwargs: object) -> None:
            raise AssertionError(f"TrainConfig.{_name} called after preflight")

        monkeypatch.setattr(TrainConfig, name, refuse)
    result = train(cfg, task=small_task)
    assert result.epochs == 2 and result.method == "e2vpt"


def test_hooks_come_as_one_object_or_one_by_one(tmp_path: Path, small_task: Task) -> None:
    rows: dict[str, list[int]] = {"hooks": [], "loose": []}
    train(
        tiny(tmp_path / "a", method="linear"),
        task=small_task,
        hooks=TrainHooks(on_epoch=lambda row: rows["hooks"].append(row["epoch"])),
    )
    train(
        tiny(tmp_path / "b", method="linear"),
        task=small_task,
        on_epoch=lambda row: rows["loose"].append(row["epoch"]),
    )
    assert rows == {"hooks": [1, 2], "loose": [1, 2]}
    strip = [
        {k: v for k, v in m.items() if k != "epoch_seconds"}
        for m in json.loads((tmp_path / "a" / "metrics.json").read_text())
    ]
    assert strip == [
        {k: v for k, v in m.items() if k != "epoch_seconds"}
        for m in json.loads((tmp_path / "b" / "metrics.json").read_text())
    ]
    with pytest.raises(ValueError, match="either"):
        train(
            tiny(tmp_path / "c", method="linear"),
            task=small_task,
            hooks=TrainHooks(),
            on_epoch=print,
        )
