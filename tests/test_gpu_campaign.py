"""The GPU campaign's bookkeeping (its steps themselves are what `--smoke` runs): steps
resume and skip across windows, a step over its budget is stopped and continued, and
results travel in parts that fit what a GPU machine sends back."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_campaign.py"


@pytest.fixture(scope="module")
def campaign():
    spec = importlib.util.spec_from_file_location("gpu_campaign", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_campaign"] = module
    spec.loader.exec_module(module)
    return module


def sleeper(campaign, seconds: float, mark: str):
    """A step whose command sleeps, then leaves a mark; done once the mark is there."""

    def run(ctx, budget):
        code = f"import time, pathlib; time.sleep({seconds}); pathlib.Path({mark!r}).touch()"
        (status,) = campaign.run_logged(
            [[sys.executable, "-c", code]], ctx.path("log"), ctx, budget
        )
        if status is None:
            return campaign.Outcome("partial", "stopped")
        return campaign.Outcome("done" if status == 0 else "failed")

    return run


def test_steps_resume_skip_and_wait_across_windows(campaign, tmp_path) -> None:
    ctx = campaign.Context(tmp_path, smoke=True, device="cpu")
    quick = tmp_path / "quick"
    slow = tmp_path / "slow"
    steps = [
        campaign.Step("tests", "quick", sleeper(campaign, 0, str(quick))),
        campaign.Step("pretrain", "slow", sleeper(campaign, 30, str(slow))),
        campaign.Step("mini", "after", sleeper(campaign, 0, str(tmp_path / "m")), ("pretrain",)),
    ]
    budgets = {"tests": 60, "pretrain": 1.0, "mini": 60}
    said: list[str] = []
    status = campaign.run_campaign(ctx, steps, 600, budgets, announce=said.append)
    states = {n: e["state"] for n, e in status["steps"].items()}
    assert states == {"tests": "done", "pretrain": "partial", "mini": "waiting"}
    assert quick.exists() and not slow.exists()  # the slow step's process group was killed
    assert json.loads((tmp_path / "status.json").read_text())["steps"]["tests"]["runs"] == 1
    assert "| pretrain | partial |" in (tmp_path / "campaign.md").read_text()

    quick.unlink()
    budgets["pretrain"] = 60
    steps[1] = campaign.Step("pretrain", "now quick", sleeper(campaign, 0, str(slow)))
    status = campaign.run_campaign(ctx, steps, 600, budgets, announce=said.append)
    assert not quick.exists()  # done before: skipped
    assert any("tests: done before, skipped" in line for line in said)
    assert {n: e["state"] for n, e in status["steps"].items()} == dict.fromkeys(
        ("tests", "pretrain", "mini"), "done"
    )
    assert status["steps"]["pretrain"]["runs"] == 2 and len(status["windows"]) == 2

    campaign.run_campaign(ctx, steps, 600, budgets, force=["tests"], announce=said.append)
    assert quick.exists()


def test_a_window_without_time_left_runs_nothing_more(campaign, tmp_path) -> None:
    ctx = campaign.Context(tmp_path, smoke=True, device="cpu")
    steps = [campaign.Step("tests", "t", sleeper(campaign, 0, str(tmp_path / "t")))]
    status = campaign.run_campaign(ctx, steps, 10, {"tests": 60}, announce=lambda _: None)
    assert status["steps"]["tests"]["state"] == "new" and not (tmp_path / "t").exists()


def test_pack_and_unpack_in_parts_leaving_data_behind(campaign, tmp_path) -> None:
    results = tmp_path / "campaign"
    (results / "speed").mkdir(parents=True)
    (results / "speed" / "speed_cuda.md").write_text("| row |\n")
    payload = os.urandom(5000)  # incompressible: several parts
    (results / "pretrain" / "work").mkdir(parents=True)
    (results / "pretrain" / "work" / "state.pt").write_bytes(payload)
    (results / "pretrain" / "work" / "cifar10_uint8.npz").write_bytes(b"cache")
    (results / "data").mkdir()
    (results / "data" / "cifar10.tar.gz").write_bytes(b"data")
    (results / "serve" / "site" / "fastapi").mkdir(parents=True)
    (results / "serve" / "site" / "fastapi" / "__init__.py").write_text("")
    sweep = results / "mini" / "sweeps" / "dtd10" / "full" / "final" / "seed42"
    sweep.mkdir(parents=True)
    (sweep / "results.json").write_text("{}")
    big = sweep / "adapter.safetensors"
    with big.open("wb") as f:
        f.truncate(campaign.PACK_MAX_SWEEP_FILE + 1)
    parts = campaign.pack(results, tmp_path / "out", part_bytes=2048)
    assert len(parts) >= 3 and all(p.stat().st_size <= 2048 for p in parts)

    back = tmp_path / "back"
    campaign.unpack(list(reversed(parts)), back)
    assert (back / "pretrain" / "work" / "state.pt").read_bytes() == payload
    assert (back / "speed" / "speed_cuda.md").read_text() == "| row |\n"
    assert (
        back / "mini" / "sweeps" / "dtd10" / "full" / "final" / "seed42" / "results.json"
    ).exists()
    for left in ("data/cifar10.tar.gz", "pretrain/work/cifar10_uint8.npz", "serve/site"):
        assert not (back / left).exists()
    assert not (back / sweep.relative_to(results) / "adapter.safetensors").exists()

    with pytest.raises(campaign.CampaignError, match="expected the parts"):
        campaign.unpack(parts[1:], back)
    with pytest.raises(campaign.CampaignError, match="more than 8 parts"):
        campaign.pack(results, tmp_path / "tiny", part_bytes=256)
    assert not list((tmp_path / "tiny").iterdir())  # nothing half-written left


def test_carry_lists_what_the_steps_left_need(campaign, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(campaign, "REPO", tmp_path)
    folder = tmp_path / "campaign"
    (folder / "pretrain" / "weights").mkdir(parents=True)
    campaign.write_status(folder, {"steps": {}})
    fresh = campaign.carry_paths(folder, campaign.read_status(folder))
    assert "campaign/data/cifar10.tar.gz" in fresh and "campaign/mini/data/mnist" in fresh
    assert "campaign/wheels" in fresh  # the serving step's FastAPI and uvicorn
    assert len(fresh) <= campaign.CARRY_PATHS
    finished = ("tests", "speed", "pruning", "serve", "pretrain")
    done = {"steps": {n: {"state": "done"} for n in finished}}
    later = campaign.carry_paths(folder, done)
    assert "campaign/data/cifar10.tar.gz" not in later and "campaign/wheels" not in later
    assert "campaign/pretrain/weights" in later


def test_run_refuses_without_a_gpu_unless_smoke(campaign, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert campaign.main(["run"]) == 2
    assert "no CUDA device here" in capsys.readouterr().err
