"""End-to-end training runs on tiny tasks: files, repeatability, linear feature caching."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import e2vpt
from e2vpt.data import Task
from e2vpt.training.config import TrainConfig
from e2vpt.training.optim import build_optimizer, build_scheduler
from e2vpt.training.trainer import train
from tests.conftest import small_builtin_task


@pytest.fixture(scope="module")
def small_task() -> Task:
    return small_builtin_task("position", (96, 48, 64))


def run(tmp_path: Path, task: Task, **overrides: object) -> tuple[e2vpt.PromptedViT, dict]:
    cfg = TrainConfig(
        output_dir=str(tmp_path),
        epochs=2,
        warmup_epochs=1,
        batch_size=32,
        progress=False,
        **overrides,
    )
    result = train(cfg, task=task)
    return result, json.loads((tmp_path / "metrics.json").read_text())


def test_a_run_writes_checkpoint_metrics_and_results(tmp_path: Path, small_task: Task) -> None:
    result, metrics = run(
        tmp_path, small_task, method="e2vpt", method_config={"visual_tokens": 2, "kv_tokens": 1}
    )
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert {"train_loss", "train_top1", "val_top1", "lr"} <= set(metrics[0])
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0].startswith("epoch,lr")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["method"] == "e2vpt" and saved["eval_split"] == "test"
    assert 0.0 <= saved["eval_top1"] <= 1.0
    model = e2vpt.load(tmp_path)
    assert model.num_classes == 9 and model.method_name == "e2vpt"
    loaded_cfg = TrainConfig.from_yaml(tmp_path / "train_config.yaml")
    assert loaded_cfg.method_config == {"visual_tokens": 2, "kv_tokens": 1}


def test_same_seed_same_run(tmp_path: Path, small_task: Task) -> None:
    _, a = run(tmp_path / "a", small_task, method="vpt-deep", method_config={"tokens": 2})
    _, b = run(tmp_path / "b", small_task, method="vpt-deep", method_config={"tokens": 2})
    _, c = run(tmp_path / "c", small_task, method="vpt-deep", method_config={"tokens": 2}, seed=7)
    strip = [{k: v for k, v in m.items() if k != "epoch_seconds"} for m in a]
    assert strip == [{k: v for k, v in m.items() if k != "epoch_seconds"} for m in b]
    assert a[-1]["train_loss"] != c[-1]["train_loss"]


def test_cached_linear_probe_matches_the_uncached_one(tmp_path: Path, small_task: Task) -> None:
    cached, m1 = run(tmp_path / "cached", small_task, method="linear")
    plain, m2 = run(tmp_path / "plain", small_task, method="linear", cache_features=False)
    assert m1[-1]["train_loss"] == pytest.approx(m2[-1]["train_loss"], rel=1e-4)
    assert cached.eval_top1 == pytest.approx(plain.eval_top1, abs=1 / 64 + 1e-9)


def test_schedule_warms_up_then_decays_and_skips_head_bias_decay() -> None:
    model = e2vpt.wrap(e2vpt.create_backbone(), e2vpt.VPTConfig(tokens=1), 3)
    cfg = TrainConfig(
        method="vpt-shallow",
        base_lr=1.0,
        batch_size=64,
        epochs=10,
        warmup_epochs=2,
        weight_decay=0.01,
    )
    run = dataclasses.replace(cfg, optimizer="sgd").resolve()
    opt = build_optimizer(model, run, torch.device("cpu"))
    sched = build_scheduler(opt, run, steps_per_epoch=10)
    lrs = []
    for step in range(1, 101):
        sched.step_update(step)
        lrs.append(opt.param_groups[0]["lr"])
    peak = 1.0 * 64 / 256
    assert lrs[9] < lrs[19] == pytest.approx(peak)
    assert all(a >= b for a, b in zip(lrs[19:], lrs[20:], strict=False))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9)
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay_of[id(model.head.bias)] == 0.0
    assert decay_of[id(model.head.weight)] == 0.01
    adamw = dataclasses.replace(cfg, optimizer="adamw").resolve()
    assert isinstance(build_optimizer(model, adamw, torch.device("cpu")), torch.optim.AdamW)


def test_bad_configs_fail_before_training(tmp_path: Path) -> None:
    with pytest.raises(e2vpt.ConfigError, match="unknown method"):
        TrainConfig(method="sidetune-v9", output_dir=str(tmp_path)).validate()
    with pytest.raises(e2vpt.ConfigError, match="warmup_epochs"):
        TrainConfig(epochs=2, warmup_epochs=5).validate()
    with pytest.raises(e2vpt.ConfigError, match="unknown config key"):
        TrainConfig.from_dict({"epoch": 3})
    assert not any(tmp_path.iterdir())


def test_linear_probe_search_keeps_the_best_on_val(tmp_path: Path, small_task: Task) -> None:
    from e2vpt.training.trainer import linear_probe_search

    cfg = TrainConfig(output_dir=str(tmp_path), epochs=2, batch_size=32, progress=False)
    best = linear_probe_search(cfg, [0.01, 0.1, 1.0], task=small_task)
    trials = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("base_lr_*/results.json"))]
    assert len(trials) == 3
    assert best.val_top1 == max(t["val_top1"] for t in trials)
    assert best.method == "linear"


def test_optimizer_choice(tmp_path: Path) -> None:
    assert TrainConfig(method="e2vpt").resolved_optimizer() == "sgd"
    assert TrainConfig(method="full").resolved_optimizer() == "adamw"
    assert TrainConfig(method="e2vpt", optimizer="adamw").resolved_optimizer() == "adamw"
    with pytest.raises(e2vpt.ConfigError, match="optimizer must be"):
        TrainConfig(optimizer="lamb").validate()


def test_fgvc_images_train_on_random_crops_and_evaluate_on_centre_crops(tmp_path: Path) -> None:
    from tests.data.test_benchmark_datasets import write_fgvc

    write_fgvc(tmp_path / "StanfordCars", per_split=6, num_classes=196)
    cfg = TrainConfig(
        method="vpt-shallow",
        method_config={"tokens": 1},
        data=f"fgvc:{tmp_path / 'StanfordCars'}",
        output_dir=str(tmp_path / "run"),
        epochs=1,
        warmup_epochs=0,
        batch_size=4,
        progress=False,
    )
    result = train(cfg)
    assert result.num_classes == 196 and result.eval_top1 is not None
    saved = TrainConfig.from_yaml(tmp_path / "run" / "train_config.yaml")
    assert saved.augment == "auto"  # resolved per task: FGVC's random-crop-flip


@pytest.mark.parametrize("flag", ["grad_checkpointing", "compile"])
def test_speed_flags_train_the_same_model(
    flag: str, tmp_path: Path, small_task: Task, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--grad-checkpointing and --compile change how the step runs, not what it computes."""
    import e2vpt.training.setup as setup

    compiled: list[torch.nn.Module] = []
    real_compile = torch.nn.Module.compile

    def recording_compile(self: torch.nn.Module, **options: object) -> None:
        compiled.append(self)
        real_compile(self, **options)

    monkeypatch.setattr(setup, "COMPILE_OPTIONS", {"backend": "eager"})  # no C++ build
    monkeypatch.setattr(torch.nn.Module, "compile", recording_compile)
    options = {"method": "e2vpt", "method_config": {"visual_tokens": 2, "kv_tokens": 1}}
    _, plain = run(tmp_path / "plain", small_task, **options)
    _, flagged = run(tmp_path / "flagged", small_task, **options, **{flag: True})
    assert len(compiled) == (flag == "compile")
    for a, b in zip(plain, flagged, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_top1"] == pytest.approx(a["val_top1"], abs=1e-9)
