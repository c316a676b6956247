"""One training run: backbone + method + task → trained adapter, metrics and a table."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from e2vpt.backbones import check_weights_file
from e2vpt.backbones.input_size import backbone_input_size
from e2vpt.checkpoint import save
from e2vpt.data import Task, check_task_spec
from e2vpt.errors import ConfigError, DiskFullError, Interrupted
from e2vpt.files import check_writable
from e2vpt.inference import resolve_device
from e2vpt.model import PromptedModel
from e2vpt.reporting import format_table, write_json
from e2vpt.runs import (
    EXISTING_MODES,
    RESULTS_FILE,
    TRAIN_STATE_FILE,
    RunFolder,
    clear,
    inspect_folder,
    mark_complete,
    read_results,
    run_differences,
)
from e2vpt.training.config import ResolvedTrainConfig, TrainConfig
from e2vpt.training.distributed import Distributed
from e2vpt.training.epoch import run_epochs, split_top1
from e2vpt.training.resume import read_state
from e2vpt.training.session import LoopState, Progress, Session, TrainHooks
from e2vpt.training.setup import load_task_at, set_up
from e2vpt.training.setup import seed_everything as seed_everything  # callers import it here
from e2vpt.training.tracking import Tracker, open_tracker


@dataclass
class RunResult:
    method: str
    backbone: str
    task: str
    num_classes: int
    tunable_params: int
    tunable_percent: float
    val_top1: float | None
    eval_split: str | None
    eval_top1: float | None
    train_seconds: float
    epochs: int
    output_dir: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table_row(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "tunable params": self.tunable_params,
            "% of backbone": round(self.tunable_percent, 3),
            "val top-1 %": None if self.val_top1 is None else round(100 * self.val_top1, 2),
            f"{self.eval_split} top-1 %": None
            if self.eval_top1 is None
            else round(100 * self.eval_top1, 2),
            "train s": round(self.train_seconds, 1),
        }


def preflight(
    cfg: TrainConfig,
    data: bool = True,
    existing: str = "refuse",
    identity: dict[str, Any] | None = None,
) -> ResolvedTrainConfig:
    """Every check that needs no decoded data or weights, so a mistake costs nothing: the
    config, the device, the weights file, the ``data`` name (unless the task comes
    ready-made) and a run folder that can be written and may be (see ``train``). Returns
    the config resolved, what the run reads from then on."""
    cfg.validate()
    resolve_device(cfg.device)
    check_weights_file(cfg.weights)
    if data:
        check_task_spec(cfg.data, val_fraction=cfg.val_fraction)
    if cfg.output_dir is not None:
        plan_run_folder(cfg, existing, identity)  # refused: before even a test write
        check_writable(Path(cfg.output_dir))
    return cfg.resolve()


def load_task_for(cfg: TrainConfig) -> Task:
    """The run's task at its backbone's input size, to share between several runs. The
    size comes from the backbone's pretrained config: no backbone is built, no weights read."""
    return load_task_at(cfg, backbone_input_size(cfg.backbone))


def train(
    cfg: TrainConfig,
    task: Task | None = None,
    save_checkpoint: bool = True,
    feature_cache: dict[tuple, dict[str, torch.Tensor]] | None = None,
    customize: Callable[[PromptedModel], object] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    existing: str = "refuse",
    identity: dict[str, Any] | None = None,
    hooks: TrainHooks | None = None,
) -> RunResult:
    """Train one method on one task and write the run folder.

    Run folder: train_config.yaml (first), metrics.json + metrics.csv (one row per epoch),
    train_state.pt (what resuming needs, after every epoch), then adapter.safetensors +
    adapter.json, results.json and, last, run_complete.json. Every file is written
    atomically. ``existing`` says what to do when the folder already holds a run:
    refuse | overwrite | resume | continue (see :mod:`e2vpt.runs`); without
    ``output_dir`` the run goes to a new ``runs/<task>-<method>[-N]``.
    ``hooks`` (or, one by one, ``feature_cache``, ``customize`` and ``on_epoch``) is what
    the caller adds to the run (see :class:`~e2vpt.training.session.TrainHooks`).
    ``identity`` is what the run computes beyond its config (a rewind's pruning plan): a
    folder holding a run of another identity is not resumed.

    Under torchrun it trains data-parallel (see :mod:`e2vpt.training.distributed`):
    ``cfg.batch_size`` is the global batch and only rank 0 writes the run folder."""
    if existing not in EXISTING_MODES:
        raise ValueError(f"existing must be one of {EXISTING_MODES}, got {existing!r}")
    hooks = _merged_hooks(hooks, feature_cache, customize, on_epoch)
    if cfg.output_dir is None:
        cfg = dataclasses.replace(cfg, output_dir=cfg.default_output_dir())
    run = preflight(cfg, data=task is None, existing=existing, identity=identity)
    ddp = Distributed.from_env(cfg.device)
    progress = Progress()
    try:
        start = _open_run_folder(cfg, existing, ddp, identity)
        if isinstance(start, RunResult):
            return start
        session, loop = set_up(run, ddp, task, start, hooks, identity, progress)
        tracker = open_tracker(
            session.out_dir, cfg.tensorboard, ddp.is_main, loop.update + 1, hooks.tracker
        )
        try:
            run_epochs(session, loop, progress, hooks.on_epoch, tracker)
            return _finish(session, loop, save_checkpoint, tracker)
        finally:
            tracker.close()
    except KeyboardInterrupt as err:
        if isinstance(err, Interrupted):
            raise
        raise Interrupted(_stopped_message(cfg, progress.saved_epoch)) from None
    except DiskFullError as err:
        if existing == "continue" or not progress.saved_epoch or not cfg.state_every:
            raise  # nothing to resume from, or the caller's command goes on by itself
        raise DiskFullError(f"{err}; {_stopped_message(cfg, progress.saved_epoch)}") from None
    finally:
        ddp.close()


def _merged_hooks(
    hooks: TrainHooks | None,
    feature_cache: dict[tuple, dict[str, torch.Tensor]] | None,
    customize: Callable[[PromptedModel], object] | None,
    on_epoch: Callable[[dict[str, Any]], None] | None,
) -> TrainHooks:
    """``hooks``, or the hooks given one by one (not both)."""
    if hooks is None:
        return TrainHooks(feature_cache=feature_cache, customize=customize, on_epoch=on_epoch)
    if any(hook is not None for hook in (feature_cache, customize, on_epoch)):
        raise ValueError("pass the hooks either as hooks=TrainHooks(...) or one by one")
    return hooks


def _stopped_message(cfg: TrainConfig, saved_epoch: int) -> str:
    out = cfg.output_dir
    command = f"`e2vpt train --resume --output-dir {out}`"
    if not cfg.state_every:
        return f"no training state is kept (--state-every 0): {command} starts it over"
    if saved_epoch == 0:
        return f"no epoch had finished: {command} starts it from epoch 1"
    return (
        f"the run in {out} is saved after epoch {saved_epoch} of {cfg.epochs}: resume it "
        f"with {command}"
    )


def plan_run_folder(
    cfg: TrainConfig, existing: str, identity: dict[str, Any] | None = None
) -> tuple[str, RunFolder]:
    """What becomes of the run folder, decided without touching it: ``fresh`` (nothing
    there), ``replace`` (delete the old run first), ``reuse`` (this run, finished) or
    ``resume`` (this run, unfinished). A folder ``existing`` does not allow is an error."""
    assert cfg.output_dir is not None
    out = Path(cfg.output_dir)
    folder = inspect_folder(out)
    if folder.kind == "foreign":
        raise folder.refusal()
    if not folder.holds_run:
        if existing == "resume":
            raise ConfigError(f"{out} holds no run to resume; start it without `resume`")
        return "fresh", folder
    if existing == "refuse":
        raise folder.refusal()
    if existing == "overwrite":
        return "replace", folder
    differs = run_differences(out, cfg, identity)
    if differs and existing == "resume":
        shown = ", ".join(f"{k}: {a!r} in the run, {b!r} now" for k, (a, b) in differs.items())
        raise ConfigError(
            f"cannot `resume`: {out} was started with other settings ({shown}); drop the "
            "settings that differ, or start a new run (`overwrite`, or another `output_dir`)"
        )
    if differs:
        return "replace", folder
    return ("reuse" if folder.kind == "complete" else "resume"), folder


def _open_run_folder(
    cfg: TrainConfig, existing: str, ddp: Distributed, identity: dict[str, Any] | None
) -> RunResult | dict[str, Any] | None:
    """The finished run's result to reuse, the training state to resume from, or None
    (train from epoch 1). Every rank decides before rank 0 changes anything."""
    action, folder = plan_run_folder(cfg, existing, identity)
    ddp.barrier()
    if action == "replace" and ddp.is_main:
        clear(folder)
    if action == "reuse":
        if ddp.is_main:  # a kill between the marker and the state's deletion left it
            (folder.path / TRAIN_STATE_FILE).unlink(missing_ok=True)
        return _stored_result(folder.path)
    if action == "resume" and cfg.state_every:
        return read_state(folder.path / TRAIN_STATE_FILE)
    return None


def _stored_result(out: Path) -> RunResult:
    """A finished run's result, as its results.json records it."""
    stored = read_results(out)
    names = {f.name for f in dataclasses.fields(RunResult)}
    return RunResult(**{k: v for k, v in stored.items() if k in names})


def _finish(
    session: Session, loop: LoopState, save_checkpoint: bool, tracker: Tracker
) -> RunResult:
    """After the last epoch: evaluation (logged, and the curves closed), then the adapter,
    results.json and, last, the completion marker; every rank returns once the run folder
    is complete."""
    train_seconds = time.perf_counter() - loop.clock_start
    run, ddp, out_dir, model = session.run, session.ddp, session.out_dir, session.model
    cfg, counts = run.config, session.counts
    eval_acc = None
    if session.splits.eval is not None:
        session.learner.trainable.eval()
        eval_acc = split_top1(session, cfg.eval_split, session.splits.eval.labels)
        tracker.log(loop.update, {f"eval/{cfg.eval_split}_top1": eval_acc})
    tracker.close()
    model.cpu()
    if save_checkpoint and ddp.is_main:
        save(model, out_dir)
    result = RunResult(
        method=run.method.method_name,
        backbone=model.backbone_name or cfg.backbone,
        task=session.task.name,
        num_classes=session.task.num_classes,
        tunable_params=counts.tunable,
        tunable_percent=counts.percent,
        val_top1=loop.val_acc,
        eval_split=cfg.eval_split,
        eval_top1=eval_acc,
        train_seconds=train_seconds,
        epochs=cfg.epochs,
        output_dir=str(out_dir),
    )
    if ddp.is_main:
        write_json(out_dir / RESULTS_FILE, {**result.to_dict(), "parameters": counts.to_dict()})
        mark_complete(out_dir, {"method": result.method, "epochs": cfg.epochs})
    ddp.barrier()  # the run folder is complete before any rank moves on
    return result


def linear_probe_search(
    cfg: TrainConfig, base_lrs: list[float], task: Task | None = None, existing: str = "refuse"
) -> RunResult:
    """Linear probes over a small lr grid on cached features; the best on val wins
    (ties → smaller lr). Cheap: the backbone runs once per image for the whole grid.
    ``existing`` is each probe's run-folder rule (see ``train``)."""
    task = task if task is not None else load_task_for(cfg)
    cache: dict[tuple, dict[str, torch.Tensor]] = {}
    best: RunResult | None = None
    for lr in sorted(base_lrs):
        trial = dataclasses.replace(
            cfg,
            method="linear",
            method_config={},
            base_lr=lr,
            output_dir=str(Path(cfg.output_dir) / f"base_lr_{lr:g}"),
            progress=False,
        )
        result = train(trial, task=task, feature_cache=cache, existing=existing)
        score = result.val_top1 if result.val_top1 is not None else -1.0
        if best is None or score > (best.val_top1 if best.val_top1 is not None else -1.0):
            best = result
    assert best is not None
    return best


def results_table(results: list[RunResult]) -> str:
    return format_table([r.table_row() for r in results])
