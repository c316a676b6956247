"""The `e2vpt prune` pipeline end to end on the demo backbone and a tiny task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import e2vpt
from e2vpt.cli.main import main
from e2vpt.data import Task
from e2vpt.pruning import apply_plan, make_plan
from e2vpt.pruning import search as search_module
from e2vpt.pruning.search import PruneSettings, prune_run
from e2vpt.runs import TENSORBOARD_DIR
from e2vpt.training.config import TrainConfig
from e2vpt.training.trainer import seed_everything, train
from e2vpt.wrapping import wrap
from tests.conftest import small_builtin_task


@pytest.fixture(scope="module")
def tiny_task() -> Task:
    return small_builtin_task("count", (64, 32, 32))


def run_config(out: Path, **overrides: object) -> TrainConfig:
    values: dict = dict(
        output_dir=str(out),
        method="e2vpt",
        method_config={"visual_tokens": 4, "kv_tokens": 1},
        epochs=1,
        warmup_epochs=0,
        batch_size=32,
        progress=False,
    )
    return TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_task: Task) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    train(run_config(run_dir), task=tiny_task)
    return run_dir


GRID = dict(token_fractions=[0.25, 0.5], segment_fractions=[0.0, 0.5], progress=False)


def test_prune_writes_report_and_a_loadable_pruned_checkpoint(
    trained_run: Path, tiny_task: Task, tmp_path: Path
) -> None:
    report = prune_run(trained_run, PruneSettings(output_dir=str(tmp_path), **GRID), tiny_task)
    for name in ("pruning_report.md", "pruning_report.csv", "pruning_report.json"):
        assert (tmp_path / name).is_file()
    assert (tmp_path / "pruning_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert len(report.rows) == 1 + 4  # the unpruned run + every grid point
    summary = json.loads((tmp_path / "pruning_report.json").read_text())
    points = summary["points"]
    best = max(p["val_top1"] for p in points)
    tied = [p for p in points if p["val_top1"] == best]
    assert report.selected["val_top1"] == best
    assert report.selected["prompt_values"] == min(p["prompt_values"] for p in tied)
    # 4 tokens · 16 segments of 12 dims; 6 layers
    assert sorted(p["prompt_values"] for p in points) == sorted(
        6 * kept * segs * 12 for kept in (3, 2) for segs in (16, 8)
    )
    model = e2vpt.load(tmp_path)
    assert model.visual_prompts.tokens == report.selected["tokens_kept"]
    assert model.visual_prompts.stored_numel() == report.selected["prompt_values"]
    assert not list(tmp_path.rglob("*.tmp"))
    # the curve in TensorBoard: top-1 over the tokens kept (3, 2; the unpruned run's 4)
    events = EventAccumulator(str(tmp_path / TENSORBOARD_DIR))
    events.Reload()
    curve = events.Scalars("pruning/val_top1 (segments pruned 0)")
    assert [e.step for e in curve] == [2, 3, 4]
    kept = {p["tokens_kept"]: p["val_top1"] for p in points if not p["plan"]["segment_fraction"]}
    assert [e.value for e in curve[:2]] == pytest.approx([kept[2], kept[3]])
    assert (Path(points[0]["run_dir"]) / TENSORBOARD_DIR).is_dir()  # each rewind's own curves


def test_rewind_starts_from_the_original_init(trained_run: Path, tiny_task: Task) -> None:
    cfg = TrainConfig.from_yaml(trained_run / "train_config.yaml")
    scores = search_module.ImportanceScores(
        torch.tensor([0.4, 0.1, 0.3, 0.2]), torch.rand(4, 16), "abs", 1, 1
    )
    plan = make_plan(scores, 0.5, 0.25)
    seen: dict[str, torch.Tensor] = {}

    def record(model: e2vpt.PromptedViT) -> None:
        apply_plan(model, plan)
        seen.update({k: v.detach().clone() for k, v in model.named_parameters()})

    rewind_dir = trained_run.parent / "rewind_probe"
    train(run_config(rewind_dir, epochs=1), task=tiny_task, customize=record)
    backbone = e2vpt.create_backbone(cfg.backbone)
    seed_everything(cfg.seed)
    original_init = wrap(backbone, cfg.build_method_config(), tiny_task.num_classes)
    init = dict(original_init.named_parameters())
    # interleaved segments: dimension j of the 192 belongs to segment j mod 16
    mask = torch.tensor(plan.kept_segments)[:, torch.arange(192) % 16].float()
    expected = init["visual_prompts.prompts"].detach()[:, list(plan.kept_tokens)] * mask
    assert torch.equal(seen["visual_prompts.prompts"], expected)
    for name in ("head.weight", "kv_prompts.0.key_prompt"):
        assert torch.equal(seen[name], init[name].detach())


def test_a_killed_search_resumes_without_redoing_finished_points(
    trained_run: Path, tiny_task: Task, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_train = search_module.train

    def dies_on_the_second(cfg: TrainConfig, **kwargs: object):
        calls.append(cfg.output_dir)
        if len(calls) == 2 and not resumed:
            raise KeyboardInterrupt
        return real_train(cfg, **kwargs)

    resumed = False
    monkeypatch.setattr(search_module, "train", dies_on_the_second)
    grid = dict(token_fractions=[0.25, 0.5, 0.75], segment_fractions=[0.0], progress=False)
    settings = PruneSettings(output_dir=str(tmp_path), **grid)
    with pytest.raises(KeyboardInterrupt):
        prune_run(trained_run, settings, tiny_task)
    assert not (tmp_path / "pruning_report.json").exists()
    calls.clear()
    resumed = True
    monkeypatch.setattr(search_module, "importance_scores", None)  # reused, not recomputed
    prune_run(trained_run, settings, tiny_task)
    assert len(calls) == 2  # the interrupted point and the one never started
    assert (tmp_path / "pruning_report.json").is_file()


def test_bad_prune_requests_fail_before_any_work(
    trained_run: Path, tiny_task: Task, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(["prune", "--from", str(trained_run), "--output-dir", str(out),
                 "--token-fractions", "0.5", "1.0", "--no-progress"])  # fmt: skip
    assert code == 2 and "token fraction must be in [0, 1)" in capsys.readouterr().err
    code = main(["prune", "--from", str(trained_run), "--output-dir", str(out),
                 "--segment-fractions", "0.9", "--no-progress"])  # fmt: skip
    assert code == 2 and "use at most 0.75" in capsys.readouterr().err
    assert not out.exists()
    code = main(["prune", "--from", str(tmp_path / "nowhere")])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    code = main(["prune", "--from", str(trained_run), "--output-dir", str(trained_run)])
    assert code == 2 and "must differ from the run folder" in capsys.readouterr().err

    vpt_dir = tmp_path / "vpt"
    train(run_config(vpt_dir, method="vpt-deep", method_config={"tokens": 2}), task=tiny_task)
    with pytest.raises(e2vpt.ConfigError, match="pruning applies to e2vpt runs"):
        prune_run(vpt_dir, PruneSettings(**GRID), tiny_task)
    no_val = Task(tiny_task.name, tiny_task.classes, {"train": tiny_task.splits["train"]})
    with pytest.raises(e2vpt.ConfigError, match="add a val/ folder"):
        prune_run(trained_run, PruneSettings(output_dir=str(out), **GRID), no_val)


def test_the_official_grid_is_72_rewinds_for_10_tokens_and_distinct_for_fewer() -> None:
    from e2vpt.pruning.search import ResolvedPruning, resolved_grid
    from e2vpt.recipes import OFFICIAL_SEGMENT_FRACTIONS, OFFICIAL_TOKEN_FRACTIONS

    official = PruneSettings().resolve("official")
    assert official == ResolvedPruning(
        "official", OFFICIAL_TOKEN_FRACTIONS, OFFICIAL_SEGMENT_FRACTIONS, "official", "zero"
    )
    grid = resolved_grid(official, tokens=10, segments=16)
    assert len(grid) == 72
    pruned_segments = sorted({round(s * 16) for _, s in grid})
    assert pruned_segments == [1, 3, 4, 6, 8, 9, 11, 12]
    assert sorted({round(t * 10) for t, _ in grid}) == list(range(1, 10))
    # 5 tokens (FGVC): ⌊0.1·5⌋ = 0 … ⌊0.9·5⌋ = 4 pruned, each count once
    assert len(resolved_grid(official, tokens=5, segments=16)) == 5 * 8
    default = PruneSettings().resolve("default")
    assert (default.score, default.prune_mode) == ("ablation", "remove")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(recipe="official"), "trained with `recipe` default; .* cannot be pruned"),
        (dict(prune_mode="remove"), "drop `prune_mode` or use `recipe` default"),
        (dict(score="abs"), "drop `score` or use `recipe` default"),
        (dict(token_fractions=[0.5]), "drop `token_fractions` or use `recipe` default"),
    ],
)
def test_pruning_settings_a_recipe_cannot_honour_fail_first(settings: dict, message: str) -> None:
    run_recipe = "default" if "recipe" in settings else "official"
    with pytest.raises(e2vpt.ConfigError, match=message):
        PruneSettings(**settings).resolve(run_recipe)


def test_prune_cli_refuses_another_recipe_than_the_runs(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pruned"
    code = main(
        ["prune", "--from", str(trained_run), "--recipe", "official", "--output-dir", str(out)]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--recipe official" in err[0]
    assert not out.exists()


def test_sweep_refuses_an_official_pruning_it_cannot_honour(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "sweep",
            "--recipe",
            "official",
            "--prune",
            "--prune-token-fractions",
            "0.5",
            "--output-dir",
            str(tmp_path / "sweeps"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "drop --prune-token-fractions or use --recipe default" in err[-1]
    assert not (tmp_path / "sweeps").exists()
