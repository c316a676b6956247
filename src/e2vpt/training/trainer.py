"""One training run: backbone + method + task → trained adapter, metrics and a table."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, resolve_data_config
from torch import nn
from tqdm.auto import tqdm

from e2vpt.accounting import count_parameters
from e2vpt.backbones import check_weights_file, create_backbone
from e2vpt.backbones.input_size import backbone_input_size
from e2vpt.checkpoint import save
from e2vpt.data import Task, check_task_spec, load_task
from e2vpt.data.augment import augment_batch
from e2vpt.errors import ConfigError, DivergedError, Interrupted
from e2vpt.files import atomic_write_text, check_writable
from e2vpt.inference import (
    InputNorm,
    autocast,
    batches,
    data_settings,
    predict,
    resolve_device,
)
from e2vpt.model import PromptedModel
from e2vpt.reporting import format_table, write_csv, write_json
from e2vpt.run_folder import (
    CONFIG_FILE,
    EXISTING_MODES,
    IDENTITY_FILE,
    RESULTS_FILE,
    STATE_FILE,
    RunFolder,
    clear,
    inspect_folder,
    mark_complete,
)
from e2vpt.training.config import TrainConfig
from e2vpt.training.distributed import Distributed
from e2vpt.training.optim import build_optimizer, build_scheduler
from e2vpt.training.resume import capture, read_state, restore, write_state
from e2vpt.wrapping import wrap


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


# torch.compile's options for `--compile` (tests swap in a fast backend)
COMPILE_OPTIONS: dict[str, Any] = {}
# the progress bar's loss is read back from the device every this many steps
PROGRESS_EVERY = 10
# a split is kept on the GPU when it takes at most this share of the free memory
RESIDENT_SHARE = 0.25


def on_device_if_it_fits(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images on a CUDA device once, when they fit (VTAB-1k's 1,000 images at 224
    are 150 MB): batches are then gathered, augmented and normalised on the GPU instead of
    being copied over every step. On the CPU, or when too big, they stay where they are."""
    if device.type != "cuda":
        return images
    free, _ = torch.cuda.mem_get_info(device)
    if images.numel() * images.element_size() > RESIDENT_SHARE * free:
        return images
    return images.to(device)


def preflight(
    cfg: TrainConfig,
    data: bool = True,
    existing: str = "refuse",
    identity: dict[str, Any] | None = None,
) -> None:
    """Every check that needs no decoded data or weights, so a mistake costs nothing: the
    config, the device, the weights file, the ``data`` name (unless the task comes
    ready-made) and a run folder that can be written and may be (see ``train``)."""
    cfg.validate()
    resolve_device(cfg.device)
    check_weights_file(cfg.weights)
    if data:
        check_task_spec(cfg.data, val_fraction=cfg.val_fraction)
    if cfg.output_dir is not None:
        plan_run_folder(cfg, existing, identity)  # refused: before even a test write
        check_writable(Path(cfg.output_dir))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def input_norm(normalize: str, backbone: nn.Module, task: Task) -> InputNorm:
    """(mean, std) for a run: ``imagenet``, ``backbone`` (its pretrained statistics) or
    ``task`` (the task's protocol: ImageNet for VTAB-1k and FGVC, else the backbone's)."""
    if normalize == "task":
        normalize = task.normalization
    if normalize == "imagenet":
        return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
    cfg = resolve_data_config({}, model=backbone)
    return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])


class _HeadOnFeatures(nn.Module):
    """The classifier alone, trained on cached features (same parameter names)."""

    def __init__(self, model: PromptedModel) -> None:
        super().__init__()
        self.pre_head, self.head = model.pre_head, model.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pre_head(x))


def _load_task(cfg: TrainConfig, image_size: int) -> Task:
    return load_task(
        cfg.data,
        image_size,
        seed=cfg.data_seed,
        progress=cfg.progress,
        val_fraction=cfg.val_fraction,
        cache=cfg.data_cache,
        quiet=int(os.environ.get("RANK", "0")) > 0,  # torchrun: rank 0 alone says it
    )


def load_task_for(cfg: TrainConfig) -> Task:
    """The run's task at its backbone's input size, to share between several runs. The
    size comes from the backbone's pretrained config: no backbone is built, no weights read."""
    return _load_task(cfg, backbone_input_size(cfg.backbone))


def train(
    cfg: TrainConfig,
    task: Task | None = None,
    save_checkpoint: bool = True,
    feature_cache: dict[tuple, dict[str, torch.Tensor]] | None = None,
    customize: Callable[[PromptedModel], object] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    existing: str = "refuse",
    identity: dict[str, Any] | None = None,
) -> RunResult:
    """Train one method on one task and write the run folder.

    Run folder: train_config.yaml (first), metrics.json + metrics.csv (one row per epoch),
    train_state.pt (what resuming needs, after every epoch), then adapter.safetensors +
    adapter.json, results.json and, last, run_complete.json. Every file is written
    atomically. ``existing`` says what to do when the folder already holds a run:
    refuse | overwrite | resume | continue (see :mod:`e2vpt.run_folder`); without
    ``output_dir`` the run goes to a new ``runs/<task>-<method>[-N]``.
    ``feature_cache`` lets several linear probes of one backbone × task share features.
    ``customize`` changes the freshly initialised model before the optimizer is built
    (pruning's rewind uses it to train a pruned model from the original init).
    ``on_epoch`` sees every epoch's metrics row (a Ray Tune trial reports them, so ASHA
    can stop it). ``identity`` is what the run computes beyond its config (a rewind's
    pruning plan): a folder holding a run of another identity is not resumed.

    Under torchrun it trains data-parallel (see :mod:`e2vpt.training.distributed`):
    ``cfg.batch_size`` is the global batch and only rank 0 writes the run folder."""
    if existing not in EXISTING_MODES:
        raise ValueError(f"existing must be one of {EXISTING_MODES}, got {existing!r}")
    if cfg.output_dir is None:
        cfg = dataclasses.replace(cfg, output_dir=cfg.default_output_dir())
    preflight(cfg, data=task is None, existing=existing, identity=identity)
    method_cfg = cfg.build_method_config()
    ddp = Distributed.from_env(cfg.device)
    progress = {"saved_epoch": 0}
    try:
        start = _open_run_folder(cfg, existing, ddp, identity)
        if isinstance(start, RunResult):
            return start
        return _train(
            cfg,
            method_cfg,
            ddp,
            task,
            save_checkpoint,
            feature_cache,
            customize,
            on_epoch,
            start,
            progress,
            identity,
        )
    except KeyboardInterrupt as err:
        if isinstance(err, Interrupted):
            raise
        raise Interrupted(_stopped_message(cfg, progress["saved_epoch"])) from None
    finally:
        ddp.close()


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
            raise ConfigError(f"{out} holds no run to resume; start it without --resume")
        return "fresh", folder
    if existing == "refuse":
        raise folder.refusal()
    if existing == "overwrite":
        return "replace", folder
    differs = _differences_from_saved(cfg, out, identity)
    if differs and existing == "resume":
        shown = ", ".join(f"{k}: {a!r} in the run, {b!r} now" for k, (a, b) in differs.items())
        raise ConfigError(
            f"--resume: {out} was started with other settings ({shown}); drop the flags "
            "that differ, or start a new run (--overwrite, or another --output-dir)"
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
        return _stored_result(folder.path)
    if action == "resume" and cfg.state_every:
        return read_state(folder.path / STATE_FILE)
    return None


def _differences_from_saved(
    cfg: TrainConfig, out: Path, identity: dict[str, Any] | None
) -> dict[str, tuple[Any, Any]]:
    if not (out / CONFIG_FILE).is_file():
        return {CONFIG_FILE: ("missing", "needed")}
    try:
        saved = TrainConfig.from_run_folder(out)
    except ConfigError as err:
        return {CONFIG_FILE: (str(err), "readable")}
    differs = saved.differences(cfg)
    try:
        saved_identity = json.loads((out / IDENTITY_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        saved_identity = None
    if saved_identity != (None if identity is None else json.loads(json.dumps(identity))):
        differs["identity"] = (saved_identity, identity)
    return differs


def _stored_result(out: Path) -> RunResult:
    """A finished run's result, as its results.json records it."""
    stored = json.loads((out / RESULTS_FILE).read_text())
    names = {f.name for f in dataclasses.fields(RunResult)}
    return RunResult(**{k: v for k, v in stored.items() if k in names})


def sharded_top1(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    precision: str,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None,
    ddp: Distributed,
) -> float:
    """Top-1 over a split; each rank predicts its share and the counts are summed."""
    images, labels = ddp.shard(images), ddp.shard(labels)
    logits = predict(forward, images, device, precision, prepare=prepare)
    correct = (logits.argmax(-1).cpu() == labels).sum().item()
    correct, total = ddp.sum([correct, len(labels)], device)
    return correct / max(total, 1)


def _train(
    cfg: TrainConfig,
    method_cfg: Any,
    ddp: Distributed,
    task: Task | None,
    save_checkpoint: bool,
    feature_cache: dict[tuple, dict[str, torch.Tensor]] | None,
    customize: Callable[[PromptedModel], object] | None,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    state: dict[str, Any] | None,
    progress: dict[str, int],
    identity: dict[str, Any] | None,
) -> RunResult:
    if ddp.enabled and cfg.batch_size < ddp.world_size:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} is the global batch; it must be at least the "
            f"number of processes ({ddp.world_size})"
        )
    device = ddp.device(resolve_device(cfg.device))
    seed_everything(cfg.seed)
    backbone = create_backbone(cfg.backbone, weights=cfg.weights)
    image_size, _ = data_settings(backbone)
    if task is None:
        task = _load_task(cfg, image_size)
    norm = input_norm(cfg.resolved("normalize"), backbone, task)
    normalizer = data_settings(backbone, norm)[1].to(device)
    train_split = task.split(cfg.train_split)
    val_split = (
        task.split(cfg.val_split) if cfg.val_split and task.has_split(cfg.val_split) else None
    )
    eval_split = (
        task.split(cfg.eval_split) if cfg.eval_split and task.has_split(cfg.eval_split) else None
    )
    used = {
        name: split
        for name, split in (
            (cfg.train_split, train_split),
            (cfg.val_split, val_split),
            (cfg.eval_split, eval_split),
        )
        if split is not None
    }

    seed_everything(cfg.seed)
    model = wrap(  # a resumed run's tensors come from its state, not starting-weight files
        backbone,
        method_cfg if state is None else method_cfg.for_restore(),
        task.num_classes,
        global_pool=cfg.global_pool,
        head_init=cfg.resolved("head_init"),
    )
    model.method_config = method_cfg
    model.input_norm = norm
    model.class_names = [str(c) for c in task.classes]
    if customize is not None:
        customize(model)
    model = model.to(device)
    model.grad_checkpointing = cfg.grad_checkpointing
    if cfg.compile:
        model.compile(**COMPILE_OPTIONS)  # in place: parameter names (checkpoints) unchanged
    counts = count_parameters(model)
    out_dir = Path(cfg.output_dir)
    if ddp.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / CONFIG_FILE, cfg.with_absolute_paths().to_yaml())
        if identity is not None:
            write_json(out_dir / IDENTITY_FILE, identity)

    steps_per_epoch = math.ceil(len(train_split) / cfg.batch_size)
    augment = task.augment if cfg.augment == "auto" else cfg.augment
    cached = method_cfg.head_only and cfg.cache_features and augment == "none"
    start = time.perf_counter()
    if cached:
        # The frozen backbone runs once per image; the head then trains on features.
        model.eval()
        key = (cfg.backbone, cfg.weights, cfg.global_pool, cfg.precision, norm, task.name, id(task))
        cache = feature_cache if feature_cache is not None else {}
        features = cache.setdefault(key, {})
        for name, s in used.items():
            if name not in features:
                features[name] = predict(
                    model.forward_pre_logits, s.images, device, cfg.precision, prepare=normalizer
                )
        trainable: nn.Module = _HeadOnFeatures(model)
        inputs = {name: features[name] for name in used}
        prepare: Callable[[torch.Tensor], torch.Tensor] | None = None
    else:
        trainable = model
        inputs = {name: on_device_if_it_fits(s.images, device) for name, s in used.items()}
        prepare = normalizer

    optimizer = build_optimizer(trainable, cfg, cfg.resolved_optimizer(), device)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    per_epoch = cfg.resolved("lr_schedule_unit") == "epoch"
    stepped: nn.Module = trainable
    if ddp.enabled:
        ddp_class = nn.parallel.DistributedDataParallel
        # masks and norms are identical on every rank: no buffer sync on every forward
        sync = (
            {"forward_sync_buffers": False}
            if "forward_sync_buffers" in inspect.signature(ddp_class).parameters
            else {"broadcast_buffers": False}
        )
        stepped = ddp_class(
            trainable, device_ids=[device.index] if device.type == "cuda" else None, **sync
        )
    generator = torch.Generator().manual_seed(cfg.seed)
    metrics: list[dict[str, Any]] = []
    labels = train_split.labels
    update = 0
    val_acc: float | None = None
    first_epoch, seconds_before = 0, 0.0
    if state is not None:
        restore(
            state,
            trainable=trainable,
            optimizer=optimizer,
            scheduler=scheduler,
            generator=generator,
            device=device,
        )
        first_epoch, update = int(state["epoch"]), int(state["update"])
        metrics, val_acc = list(state["metrics"]), state["val_acc"]
        seconds_before = float(state["train_seconds"])
        progress["saved_epoch"] = first_epoch
        if ddp.is_main:
            print(
                f"e2vpt train: resuming {out_dir} after epoch {first_epoch} of {cfg.epochs}",
                file=sys.stderr,
            )
    start -= seconds_before  # train seconds count every session's training
    with tqdm(
        initial=first_epoch * steps_per_epoch,
        total=cfg.epochs * steps_per_epoch,
        disable=not (cfg.progress and ddp.is_main),
        desc=f"{method_cfg.method_name}",
        unit="step",
        dynamic_ncols=True,
    ) as bar:  # closed on Ctrl-C too, so the message comes after it
        for epoch in range(first_epoch, cfg.epochs):
            trainable.train()
            epoch_start = time.perf_counter()
            if per_epoch:  # the official schedule: one lr for the whole epoch
                scheduler.step(epoch)
            # running sums stay on the device: no host sync per step, so on a GPU the next
            # batch is prepared while this one computes
            loss_total = torch.zeros((), dtype=torch.float64, device=device)
            correct_total = torch.zeros((), dtype=torch.long, device=device)
            seen = 0
            for step, idx in enumerate(batches(len(train_split), cfg.batch_size, generator)):
                if cached:
                    x = inputs[cfg.train_split][idx]
                else:  # the global batch, so every rank's generator stays in step
                    x = augment_batch(
                        augment,
                        inputs[cfg.train_split],
                        train_split.crops,
                        idx,
                        generator,
                        image_size,
                    )
                x, y = ddp.shard(x), ddp.shard(labels[idx])
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                if prepare is not None:
                    x = prepare(x)
                with autocast(device, cfg.precision):
                    logits = stepped(x)
                local_loss = F.cross_entropy(logits.float(), y, reduction="sum")
                # DDP averages gradients over ranks: this makes it the global batch mean's
                loss = local_loss * (ddp.world_size / len(idx))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                update += 1
                if not per_epoch:
                    scheduler.step_update(update)
                loss_total += local_loss.detach()
                correct_total += (logits.detach().argmax(-1) == y).sum()
                seen += len(y)
                bar.update(1)
                if step % PROGRESS_EVERY == 0:
                    shown = local_loss.item() / max(len(y), 1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{shown:.3f}")
            loss_sum, correct, seen = ddp.sum(
                [loss_total.item(), float(correct_total.item()), float(seen)], device
            )
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": loss_sum / seen,
                "train_top1": correct / seen,
            }
            if not math.isfinite(row["train_loss"]):
                raise DivergedError(
                    f"training diverged (loss {row['train_loss']}) at epoch {epoch + 1}; "
                    "lower --base-lr"
                )
            if val_split is not None:
                trainable.eval()
                val_acc = sharded_top1(
                    trainable,
                    inputs[cfg.val_split],
                    val_split.labels,
                    device,
                    cfg.precision,
                    prepare,
                    ddp,
                )
                row["val_top1"] = val_acc
                bar.set_postfix(
                    epoch=epoch + 1, loss=f"{row['train_loss']:.3f}", val=f"{100 * val_acc:.1f}%"
                )
            row["epoch_seconds"] = time.perf_counter() - epoch_start
            metrics.append(row)
            if ddp.is_main:
                write_json(out_dir / "metrics.json", metrics)
                write_csv(out_dir / "metrics.csv", metrics)
            if cfg.state_every and (epoch + 1) % cfg.state_every == 0:
                if ddp.is_main:
                    snapshot = capture(
                        epoch=epoch + 1,
                        update=update,
                        trainable=trainable,
                        optimizer=optimizer,
                        scheduler=scheduler,
                        generator=generator,
                        device=device,
                        metrics=metrics,
                        val_acc=val_acc,
                        train_seconds=time.perf_counter() - start,
                    )
                    write_state(out_dir / STATE_FILE, snapshot)
                progress["saved_epoch"] = epoch + 1
            if on_epoch is not None:
                on_epoch(row)
    train_seconds = time.perf_counter() - start

    eval_acc = None
    if eval_split is not None:
        trainable.eval()
        eval_acc = sharded_top1(
            trainable,
            inputs[cfg.eval_split],
            eval_split.labels,
            device,
            cfg.precision,
            prepare,
            ddp,
        )
    model.cpu()
    if save_checkpoint and ddp.is_main:
        save(model, out_dir)
    result = RunResult(
        method=method_cfg.method_name,
        backbone=model.backbone_name or cfg.backbone,
        task=task.name,
        num_classes=task.num_classes,
        tunable_params=counts.tunable,
        tunable_percent=counts.percent,
        val_top1=val_acc,
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
