"""Run folders as transactions: never overwritten unasked, resumable bit for bit,
refused by readers until finished."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import e2vpt
from e2vpt.checkpoint import CheckpointError
from e2vpt.cli.main import main
from e2vpt.data import Task
from e2vpt.errors import ConfigError, Interrupted
from e2vpt.runs import RUN_COMPLETE_FILE, TRAIN_STATE_FILE, inspect_folder, setting_differences
from e2vpt.sweeps.runner import Trial, run_trial
from e2vpt.training.config import TrainConfig
from e2vpt.training.trainer import train
from tests.conftest import small_builtin_task, stop_after

EPOCHS = 4


@pytest.fixture(scope="module")
def task() -> Task:
    return small_builtin_task("position", (64, 32, 32))


def config(out: Path, **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = dict(
        output_dir=str(out),
        method="e2vpt",
        method_config={"visual_tokens": 3, "kv_tokens": 2, "visual_dropout": 0.1},
        epochs=EPOCHS,
        warmup_epochs=1,
        batch_size=16,
        augment="flip",  # the batch generator's state matters too
        progress=False,
    )
    return TrainConfig(**{**values, **overrides})


def metrics(out: Path) -> list[dict[str, Any]]:
    rows = json.loads((out / "metrics.json").read_text())
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # SGD with momentum, dropout, flips
        {"optimizer": "adamw", "lr_schedule_unit": "epoch"},
        {"method": "linear", "method_config": {}, "augment": "none"},  # cached features
    ],
    ids=["e2vpt-sgd", "e2vpt-adamw-per-epoch", "linear-cached"],
)
def test_an_interrupted_run_resumes_bit_for_bit(
    tmp_path: Path, task: Task, overrides: dict[str, Any]
) -> None:
    whole = train(config(tmp_path / "whole", **overrides), task=task)
    stop = random.Random(str(overrides)).randint(1, EPOCHS - 1)
    cut = config(tmp_path / "cut", **overrides)
    with pytest.raises(Interrupted, match=f"saved after epoch {stop} of {EPOCHS}"):
        train(cut, task=task, on_epoch=stop_after(stop))
    folder = inspect_folder(tmp_path / "cut")
    assert folder.kind == "incomplete" and folder.epochs_done == stop
    assert (tmp_path / "cut" / TRAIN_STATE_FILE).is_file()

    seen: list[int] = []
    resumed = train(cut, task=task, existing="resume", on_epoch=lambda r: seen.append(r["epoch"]))
    assert seen == list(range(stop + 1, EPOCHS + 1))  # no epoch trained twice
    one, two = (
        load_file(tmp_path / "whole" / "adapter.safetensors"),
        load_file(tmp_path / "cut" / "adapter.safetensors"),
    )
    assert one.keys() == two.keys()
    for key in one:
        assert torch.equal(one[key], two[key]), key
    assert metrics(tmp_path / "whole") == metrics(tmp_path / "cut")
    assert resumed.eval_top1 == whole.eval_top1 and resumed.val_top1 == whole.val_top1
    # finished: the marker is written and the training state is gone
    assert (tmp_path / "cut" / RUN_COMPLETE_FILE).is_file()
    assert not (tmp_path / "cut" / TRAIN_STATE_FILE).exists()


def test_a_second_run_into_the_same_folder_is_refused(tmp_path: Path, task: Task) -> None:
    out = tmp_path / "run"
    train(config(out, epochs=1), task=task)
    before = snapshot(out)
    with pytest.raises(ConfigError, match="already holds a finished run; pass `overwrite`"):
        train(config(out, epochs=1, method="vpt-deep", method_config={"tokens": 2}), task=task)
    assert snapshot(out) == before


def test_overwrite_leaves_nothing_of_the_old_run(tmp_path: Path, task: Task) -> None:
    out = tmp_path / "run"
    train(config(out, epochs=1), task=task)
    (out / "eval_other_test.json").write_text("{}")
    (out / "pruned").mkdir()
    (out / "pruned" / "adapter.json").write_text("{}")
    train(config(out, epochs=1, method="linear", method_config={}), task=task, existing="overwrite")
    names = {p.name for p in out.iterdir()}
    assert "eval_other_test.json" not in names and "pruned" not in names
    assert json.loads((out / "results.json").read_text())["method"] == "linear"
    assert e2vpt.load(out).method_name == "linear"


def test_a_folder_of_other_files_is_never_deleted(tmp_path: Path, task: Task) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    for existing in ("refuse", "overwrite", "continue"):
        with pytest.raises(ConfigError, match="holds no e2vpt run"):
            train(config(tmp_path, epochs=1), task=task, existing=existing)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_readers_refuse_an_unfinished_run(tmp_path: Path, task: Task) -> None:
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(config(out), task=task, on_epoch=stop_after(1))
    with pytest.raises(CheckpointError, match="unfinished run.*--resume --output-dir"):
        e2vpt.load(out)
    assert main(["eval", str(out)]) == 2
    assert main(["prune", "--from", str(out), "--no-progress"]) == 2


def test_resume_refuses_other_settings_and_empty_folders(tmp_path: Path, task: Task) -> None:
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="holds no run to resume"):
        train(config(out), task=task, existing="resume")
    with pytest.raises(Interrupted):
        train(config(out), task=task, on_epoch=stop_after(1))
    with pytest.raises(ConfigError, match=r"cannot `resume`: .*epochs: 4 in the run, 6 now"):
        train(config(out, epochs=6), task=task, existing="resume")
    # runtime fields may change
    train(config(out, progress=True, state_every=2), task=task, existing="resume")
    assert inspect_folder(out).kind == "complete"


def test_a_finished_run_is_reused_by_continue(tmp_path: Path, task: Task) -> None:
    out = tmp_path / "run"
    first = train(config(out, epochs=1), task=task)
    seen: list[int] = []
    again = train(config(out, epochs=1), task=task, existing="continue", on_epoch=seen.append)
    assert seen == [] and again == first
    # another config in the same folder: continue replaces it
    train(config(out, epochs=2), task=task, existing="continue", on_epoch=seen.append)
    assert [r["epoch"] for r in seen] == [1, 2]


def test_a_sweep_trial_resumes_instead_of_restarting(tmp_path: Path, task: Task) -> None:
    out = tmp_path / "trial"
    trial = Trial(kind="grid", label="lr1", run_dir=str(out), config=config(out).to_dict())
    with pytest.raises(KeyboardInterrupt):
        run_trial(trial, task=task, on_epoch=stop_after(2))
    seen: list[int] = []
    record = run_trial(trial, task=task, on_epoch=lambda r: seen.append(r["epoch"]))
    assert seen == [3, 4] and record["val_top1"] is not None


def test_runs_without_an_output_dir_get_fresh_names(
    tmp_path: Path, task: Task, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = train(config(tmp_path, epochs=1, output_dir=None), task=task)
    second = train(config(tmp_path, epochs=1, output_dir=None), task=task)
    assert Path(first.output_dir) == Path("runs/count-e2vpt")
    assert Path(second.output_dir) == Path("runs/count-e2vpt-2")
    assert inspect_folder(first.output_dir).kind == "complete"


def test_stored_paths_are_absolute(tmp_path: Path, task: Task, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    train(config(Path("rel"), epochs=1, data="some/folder"), task=task)
    saved = TrainConfig.from_yaml(tmp_path / "rel" / "train_config.yaml")
    assert saved.data == str(tmp_path / "some" / "folder")
    assert saved.output_dir == str(tmp_path / "rel")


def test_a_resumed_sidetune_run_does_not_read_its_starting_weights_again(
    tmp_path: Path, task: Task
) -> None:
    """The side network's starting-weights file is read when a run starts; a resumed run
    takes the side network from its state, so the file may be gone by then."""
    from e2vpt.methods.sidetune import SidetuneConfig

    side = SidetuneConfig(channels=4, conv_layers=1)
    donor = e2vpt.wrap(e2vpt.create_backbone("demo_vit_cifar10"), side, task.num_classes)
    weights = tmp_path / "side.pth"
    torch.save(donor.side_branch.convs.state_dict(), weights)
    options = {"channels": 4, "conv_layers": 1, "side_weights": str(weights)}
    overrides = {"method": "sidetune", "method_config": options, "augment": "none"}
    whole = train(config(tmp_path / "whole", **overrides), task=task)
    cut = config(tmp_path / "cut", **overrides)
    with pytest.raises(Interrupted):
        train(cut, task=task, on_epoch=stop_after(2))
    weights.unlink()
    resumed = train(cut, task=task, existing="resume")
    assert resumed.eval_top1 == whole.eval_top1
    one = load_file(tmp_path / "whole" / "adapter.safetensors")
    two = load_file(tmp_path / "cut" / "adapter.safetensors")
    assert all(torch.equal(one[k], two[k]) for k in one)


def test_settings_match_in_their_absolute_and_resolved_forms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One answer to "is this the run": paths as absolute paths, a method's options as
    the method resolves them, runtime fields not at all."""
    monkeypatch.chdir(tmp_path)
    saved = config(tmp_path / "run", data=str(tmp_path / "data")).with_absolute_paths()
    typed = config(Path("run"), data="data", device="cpu", progress=True)
    assert setting_differences(saved, typed) == {}
    explicit = {**saved.method_config, "shared_kv": True}  # an option at its default
    assert setting_differences(saved, dataclasses.replace(saved, method_config=explicit)) == {}
    options = {**saved.method_config, "visual_tokens": 5}
    other = dataclasses.replace(typed, data="elsewhere", method_config=options)
    assert setting_differences(saved, other) == {
        "data": (str(tmp_path / "data"), str(tmp_path / "elsewhere")),
        "visual_tokens": (3, 5),
    }
