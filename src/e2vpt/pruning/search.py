"""The pruning pipeline behind ``e2vpt prune``: importance → grid of rewound retrains →
selection on val → report and final pruned checkpoint.

Every grid point is a complete run folder under ``OUT/grid/``; a point whose
``pruning_point.json`` exists (written last) is reused, so a killed search resumes
where it stopped."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2vpt.backbones import check_weights_file, create_backbone
from e2vpt.checkpoint import CheckpointError, load
from e2vpt.data import Task
from e2vpt.files import atomic_write_bytes, atomic_write_text
from e2vpt.inference import model_data_settings, resolve_device
from e2vpt.methods.base import ConfigError
from e2vpt.notices import note
from e2vpt.pruning.importance import ImportanceScores, importance_scores
from e2vpt.pruning.plan import (
    PruningPlan,
    apply_plan,
    check_fractions,
    distinct_grid,
    make_plan,
)
from e2vpt.pruning.report import plot_pruning, report_rows
from e2vpt.pruning.settings import SCORE_DEFINITIONS, PruneSettings, ResolvedPruning
from e2vpt.reporting import format_table, write_csv, write_json
from e2vpt.runs import (
    ADAPTER_CONFIG_FILE,
    CHECKPOINT_FILES,
    PRUNING_CURVE_FILE,
    PRUNING_IMPORTANCE_FILE,
    PRUNING_POINT_FILE,
    PRUNING_REPORT_NAME,
    RESULTS_FILE,
    RUN_COMPLETE_FILE,
    absolute,
    read_adapter_config,
    read_record,
    read_results,
    read_train_config,
    require_complete,
)
from e2vpt.runs.schema import fits_record, method_config_of
from e2vpt.training.config import TrainConfig
from e2vpt.training.tracking import write_curves
from e2vpt.training.trainer import load_task_for, seed_everything, train


@dataclass
class PruneReport:
    rows: list[dict[str, Any]]  # the original run first, then every grid point
    selected: dict[str, Any]
    output_dir: Path

    def table(self) -> str:
        return format_table(self.rows, float_digits=2)


def _e2vpt_config(run_dir: Path, meta: dict[str, Any]) -> Any:
    """The run's E²VPT options as its adapter.json records them (read as every reader of
    a run folder reads them: checked, with the options older versions lacked filled in)."""
    return method_config_of(meta, run_dir / ADAPTER_CONFIG_FILE)


def _run_config(run_dir: Path, meta: dict[str, Any]) -> TrainConfig:
    if meta["method"] != "e2vpt":
        raise ConfigError(
            f"{run_dir} holds a {meta['method']!r} run; pruning applies to e2vpt runs "
            "(train one with `e2vpt train --method e2vpt ...`)"
        )
    if meta.get("pruning"):
        raise ConfigError(
            f"{run_dir} is already a pruned model; run `e2vpt prune` on the unpruned run it "
            "came from"
        )
    return read_train_config(
        run_dir,
        "which rewinding needs (same data and hyper-parameters); prune a folder written by "
        "`e2vpt train`",
    )


def _load_importance(
    path: Path, mode: str, prune_mode: str, source_sha: str | None
) -> ImportanceScores | None:
    data = read_record(path)
    if data is None or data.get("source_sha256") != source_sha:
        return None
    if (data.get("mode"), data.get("prune_mode", "remove")) != (mode, prune_mode):
        return None
    if not fits_record(data, _IMPORTANCE_FIELDS):
        return None
    try:
        return ImportanceScores.from_dict(data)
    except (TypeError, ValueError, RuntimeError):  # scores that are no lists of numbers
        return None


# what a pruning point's record must hold to be reused (else the point is trained again)
_POINT_FIELDS: dict[str, tuple[type, ...]] = {
    "val_top1": (int, float),
    "prompt_values": (int,),
    "tokens_kept": (int,),
    "parameters": (dict,),
    "eval_top1": (int, float, type(None)),
    "run_dir": (str,),
}
_IMPORTANCE_FIELDS: dict[str, tuple[type, ...]] = {
    "token": (list,),
    "segment": (list,),
    "batches": (int,),
    "images": (int,),
}


def _load_point(path: Path, plan: PruningPlan, source_sha: str | None, epochs: int) -> dict | None:
    data = read_record(path)
    same = data is not None and (
        data.get("plan") == plan.to_dict()
        and data.get("source_sha256") == source_sha
        and data.get("epochs") == epochs
        and fits_record(data, _POINT_FIELDS)
    )
    return data if same else None


def _select(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Best val top-1; ties go to more pruning (fewer prompt values kept, then more
    tokens pruned)."""
    return max(
        points,
        key=lambda p: (
            p["val_top1"],
            -p["prompt_values"],
            p["plan"]["token_fraction"],
            p["plan"]["segment_fraction"],
        ),
    )


def _copy_checkpoint(source: Path, target: Path) -> None:
    """The selected point's checkpoint becomes OUT's own: an earlier search's recipe and
    marker go first (so no reader pairs them with the new tensors while it is copied),
    then tensors first, recipe and marker last, each file atomic."""
    for name in (RUN_COMPLETE_FILE, ADAPTER_CONFIG_FILE):
        (target / name).unlink(missing_ok=True)
    for name in CHECKPOINT_FILES:
        if (source / name).is_file():
            atomic_write_bytes(target / name, (source / name).read_bytes())


def _importance(
    run_dir: Path,
    cfg: TrainConfig,
    task: Task,
    pruning: ResolvedPruning,
    path: Path,
    source_sha: str | None,
) -> ImportanceScores:
    """The run's importance scores over its own training split (reused from ``path``
    when they were computed for the same checkpoint, score and prune mode)."""
    score, prune_mode = pruning.score, pruning.prune_mode
    scores = _load_importance(path, score, prune_mode, source_sha)
    if scores is not None:
        return scores
    note(f"importance ({score}) over {run_dir}'s training split", once=False)
    device = resolve_device(cfg.device)
    backbone = create_backbone(cfg.backbone, weights=cfg.weights) if cfg.weights else None
    try:
        model = load(run_dir, backbone=backbone).to(device)
    except CheckpointError as err:
        raise ConfigError(f"cannot load the run to prune: {err}") from err
    _, normalizer = model_data_settings(model)
    split = task.split(cfg.train_split)
    seed_everything(cfg.seed)
    scores = importance_scores(
        model,
        split.images,
        split.labels,
        batch_size=cfg.batch_size,
        mode=score,
        prepare=normalizer.to(device),
        device=device,
        progress=cfg.progress,
        prune_mode=prune_mode,
        seed=cfg.seed,
    )
    write_json(path, {**scores.to_dict(), "source_sha256": source_sha})
    return scores


def _rewind_point(
    cfg: TrainConfig, task: Task, plan: PruningPlan, point_dir: Path, source_sha: str | None
) -> dict[str, Any]:
    """Prune the freshly initialised model (same seed: the original init), retrain with
    the run's recipe, and record the point (its PRUNING_POINT_FILE is written last)."""
    point_cfg = dataclasses.replace(cfg, output_dir=str(point_dir))
    result = train(
        point_cfg,
        task=task,
        customize=lambda m: apply_plan(m, plan),
        existing="continue",  # a rewind stopped mid-way resumes; another plan's is replaced
        identity={"plan": plan.to_dict(), "source_sha256": source_sha},
    )
    # the point's own files already hold its counts: no need to rebuild the model
    saved = read_results(point_dir)
    done = {
        "plan": plan.to_dict(),
        "source_sha256": source_sha,
        "epochs": cfg.epochs,
        "tokens_kept": len(plan.kept_tokens),
        "prompt_values": read_adapter_config(point_dir)["pruning"]["stored_prompt_values"],
        "parameters": saved["parameters"],
        "val_top1": result.val_top1,
        "eval_split": result.eval_split,
        "eval_top1": result.eval_top1,
        "train_seconds": result.train_seconds,
        "run_dir": str(point_dir),
    }
    write_json(point_dir / PRUNING_POINT_FILE, done)
    return done


def _prepare(
    run_dir: Path, settings: PruneSettings, epochs: int | None
) -> tuple[dict[str, Any], TrainConfig]:
    if not run_dir.is_dir():
        raise ConfigError(f"run folder {run_dir} does not exist; pass the output dir of a run")
    require_complete(run_dir, "prune")
    settings.validate()
    meta = read_adapter_config(run_dir)
    cfg = _run_config(run_dir, meta)
    overrides: dict[str, Any] = {"progress": settings.progress, "compare_linear": False}
    if settings.device is not None:
        overrides["device"] = settings.device
    if settings.weights is not None:
        overrides["weights"] = settings.weights
    else:
        check_weights_file(cfg.weights, trained_in=run_dir)
    if epochs is not None:
        overrides["epochs"] = epochs
        if cfg.warmup_epochs is not None and cfg.warmup_epochs > epochs:
            overrides["warmup_epochs"] = None
    cfg = dataclasses.replace(cfg, **overrides)
    cfg.validate()
    return meta, cfg


def prune_fixed(
    run_dir: str | Path,
    token_fraction: float,
    segment_fraction: float,
    output_dir: str | Path,
    task: Task | None = None,
    settings: PruneSettings | None = None,
) -> dict[str, Any]:
    """Prune a run at fractions chosen elsewhere (a sweep's final seeds reuse the
    fractions its search picked on val): importance over the run's own training split,
    rewind, retrain with the run's recipe. OUT is a normal run folder; resumable.
    ``settings`` gives the score, prune mode and recipe (its grid is not used)."""
    run_dir, out = absolute(run_dir), absolute(output_dir)
    settings = settings or PruneSettings()
    meta, cfg = _prepare(run_dir, settings, None)
    pruning = settings.resolve(cfg.recipe)
    e2 = _e2vpt_config(run_dir, meta)
    check_fractions(token_fraction, segment_fraction, e2.visual_tokens, e2.mask_segments)
    source_sha = meta.get("sha256")
    if task is None:
        task = load_task_for(cfg)
    out.mkdir(parents=True, exist_ok=True)
    scores = _importance(run_dir, cfg, task, pruning, out / PRUNING_IMPORTANCE_FILE, source_sha)
    plan = make_plan(scores, token_fraction, segment_fraction, pruning.prune_mode)
    done = _load_point(out / PRUNING_POINT_FILE, plan, source_sha, cfg.epochs)
    if done is None:
        return _rewind_point(cfg, task, plan, out, source_sha)
    return {**done, "run_dir": str(out)}  # where it is now, not where it was


def resolved_grid(
    pruning: ResolvedPruning, tokens: int, segments: int
) -> list[tuple[float, float]]:
    """The grid's (token, segment) fraction pairs that prune distinct counts, each
    checked against the prompt geometry before any work."""
    grid = distinct_grid(pruning.token_fractions, pruning.segment_fractions, tokens, segments)
    for t, s in grid:
        check_fractions(t, s, tokens, segments)
    return grid


def _grid_points(
    out: Path,
    grid: list[tuple[float, float]],
    scores: ImportanceScores,
    pruning: ResolvedPruning,
    cfg: TrainConfig,
    task: Task,
    source_sha: str | None,
) -> list[dict[str, Any]]:
    """Every grid point rewound and retrained, or its record reused when an earlier
    search finished it for the same checkpoint and rewind length."""
    points: list[dict[str, Any]] = []
    for index, (t, s) in enumerate(grid, start=1):
        plan = make_plan(scores, t, s, pruning.prune_mode)
        point_dir = out / "grid" / plan.label
        done = _load_point(point_dir / PRUNING_POINT_FILE, plan, source_sha, cfg.epochs)
        if done is None:
            note(
                f"[{index}/{len(grid)}] rewind + retrain: prune {t:g} of tokens, {s:g} of "
                f"segments → {point_dir}",
                once=False,
            )
            done = _rewind_point(cfg, task, plan, point_dir, source_sha)
        else:
            note(f"[{index}/{len(grid)}] {plan.label}: done earlier, reused", once=False)
            done = {**done, "run_dir": str(point_dir)}  # where it is now, not where it was
        points.append(done)

    return points


def prune_run(
    run_dir: str | Path, settings: PruneSettings | None = None, task: Task | None = None
) -> PruneReport:
    """Prune a trained e2vpt run folder; see the module docstring for the folder layout."""
    settings = settings or PruneSettings()
    settings.validate()
    # absolute: the points' records (reused by a later search, maybe started elsewhere)
    # and the report name folders that must not depend on the working directory
    run_dir = absolute(run_dir)
    meta, cfg = _prepare(run_dir, settings, settings.epochs)
    pruning = settings.resolve(cfg.recipe)
    out = absolute(settings.output_dir) if settings.output_dir else run_dir / "pruned"
    if out.resolve() == run_dir.resolve():
        raise ConfigError(
            "`output_dir` must differ from the run folder (its checkpoint would be replaced)"
        )
    e2 = _e2vpt_config(run_dir, meta)
    grid = resolved_grid(pruning, e2.visual_tokens, e2.mask_segments)

    source_sha = meta.get("sha256")
    if task is None:
        task = load_task_for(cfg)
    if not cfg.val_split or cfg.val_split not in task.splits:
        raise ConfigError(
            f"pruning selects its fractions on the validation split, but task {task.name!r} "
            f"has none (splits: {sorted(task.splits)}); add a val/ folder"
        )

    out.mkdir(parents=True, exist_ok=True)
    scores = _importance(run_dir, cfg, task, pruning, out / PRUNING_IMPORTANCE_FILE, source_sha)
    points = _grid_points(out, grid, scores, pruning, cfg, task, source_sha)

    selected = _select(points)
    original = _original_point(run_dir, meta, e2)
    rows = report_rows(original, points, selected)
    _copy_checkpoint(Path(selected["run_dir"]), out)
    summary = {
        "source_run": str(run_dir),
        "source_sha256": source_sha,
        "recipe": pruning.recipe,
        "score": pruning.score,
        "score_definition": SCORE_DEFINITIONS[pruning.score],
        "prune_mode": pruning.prune_mode,
        "rewind_epochs": cfg.epochs,
        "selection": "best val top-1; ties → fewer prompt values kept",
        "selected": selected,
        "original": original,
        "points": points,
        "importance": scores.to_dict(),
    }
    write_json(out / f"{PRUNING_REPORT_NAME}.json", summary)
    write_csv(out / f"{PRUNING_REPORT_NAME}.csv", rows)
    report = PruneReport(rows=rows, selected=selected, output_dir=out)
    text = (
        f"# Pruning report: {run_dir}\n\n{report.table()}\n\n"
        f"Selected on val: {selected['plan']['token_fraction']:g} of tokens and "
        f"{selected['plan']['segment_fraction']:g} of segments pruned "
        f"({selected['tokens_kept']} of {e2.visual_tokens} tokens kept). "
        f"Recipe: {pruning.recipe}; importance: {pruning.score}; pruned tokens "
        f"{'removed' if pruning.prune_mode == 'remove' else 'kept as zeros'}; rewind: "
        f"{cfg.epochs} epochs from the original init.\n"
    )
    atomic_write_text(out / f"{PRUNING_REPORT_NAME}.md", text)
    plot_pruning(original, points, selected, out / PRUNING_CURVE_FILE, title=str(run_dir))
    write_curves(out, cfg.tensorboard, _pruning_curves(original, points))
    return report


def _pruning_curves(
    original: dict[str, Any], points: list[dict[str, Any]]
) -> dict[str, list[tuple[int, float]]]:
    """For TensorBoard: val and eval top-1 over the tokens kept (the step), one curve per
    share of segments pruned; the unpruned run ends each curve (where no point keeps
    every token)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for s in sorted({p["plan"]["segment_fraction"] for p in points}):
        for key in ("val_top1", "eval_top1"):
            split = "val" if key == "val_top1" else original.get("eval_split") or "test"
            tag = f"pruning/{split}_top1 (segments pruned {s:g})"
            row = [p for p in points if p["plan"]["segment_fraction"] == s]
            if all(p["tokens_kept"] != original["tokens_kept"] for p in row):
                row.append(original)
            curves[tag] = [(p["tokens_kept"], p[key]) for p in row if p.get(key) is not None]
    return curves


def _original_point(run_dir: Path, meta: dict[str, Any], e2: Any) -> dict[str, Any]:
    """The unpruned run as the reference row (its own results.json)."""
    results = read_record(run_dir / RESULTS_FILE) or {}
    values = math.prod(meta.get("tensors", {}).get("visual_prompts.prompts", [0]))
    return {
        "plan": {"token_fraction": 0.0, "segment_fraction": 0.0},
        "tokens_kept": e2.visual_tokens,
        "prompt_values": values,
        "parameters": results.get("parameters", {}),
        "val_top1": results.get("val_top1"),
        "eval_split": results.get("eval_split", "test"),
        "eval_top1": results.get("eval_top1"),
        "train_seconds": results.get("train_seconds"),
        "run_dir": str(run_dir),
    }
