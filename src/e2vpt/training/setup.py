"""A run's setup: device, seed, backbone, task, model, inputs (images or cached
features), optimizer, DDP and, when resuming, the saved state put back."""

from __future__ import annotations

import inspect
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, resolve_data_config
from torch import nn

from e2vpt.accounting import count_parameters
from e2vpt.backbones import create_backbone
from e2vpt.data import Task, load_task
from e2vpt.errors import ConfigError
from e2vpt.files import atomic_write_text
from e2vpt.inference import InputNorm, Normalizer, data_settings, predict, resolve_device
from e2vpt.model import PromptedModel
from e2vpt.notices import note
from e2vpt.reporting import write_json
from e2vpt.runs import RUN_IDENTITY_FILE, TRAIN_CONFIG_FILE
from e2vpt.training.config import ResolvedTrainConfig, TrainConfig
from e2vpt.training.distributed import Distributed
from e2vpt.training.optim import build_optimizer, build_scheduler
from e2vpt.training.resume import restore
from e2vpt.training.session import (
    Inputs,
    Learner,
    LoopState,
    Progress,
    Session,
    Splits,
    TrainHooks,
)
from e2vpt.wrapping import wrap

# torch.compile's options for the `compile` setting (tests swap in a fast backend)
COMPILE_OPTIONS: dict[str, Any] = {}
# a split is kept on the GPU when it takes at most this share of the free memory
RESIDENT_SHARE = 0.25


def set_up(
    run: ResolvedTrainConfig,
    ddp: Distributed,
    task: Task | None,
    state: dict[str, Any] | None,
    hooks: TrainHooks,
    identity: dict[str, Any] | None,
    progress: Progress,
) -> tuple[Session, LoopState]:
    """Everything the epoch loop needs, and where it starts: epoch 1, or after the
    epoch ``state`` (a resumed run's saved training state) was saved."""
    cfg = run.config
    _check_global_batch(cfg.batch_size, ddp)
    device = ddp.device(resolve_device(cfg.device))
    backbone, task, norm, image_size = _backbone_and_task(run, task)
    normalizer = data_settings(backbone, norm)[1].to(device)
    splits = Splits.of(task, run)
    model = _build_model(run, backbone, task, norm, state is None, hooks).to(device)
    model.grad_checkpointing = cfg.grad_checkpointing
    if cfg.compile:
        model.compile(**COMPILE_OPTIONS)  # in place: parameter names (checkpoints) unchanged
    counts = count_parameters(model)
    out_dir = Path(cfg.output_dir)
    if ddp.is_main:
        _write_config(cfg, out_dir, identity)
    clock_start = time.perf_counter()  # caching features counts as training time
    augment = run.augment_for(task.augment)
    trainable: nn.Module = model
    if run.method.head_only and cfg.cache_features and augment == "none":
        # The frozen backbone runs once per image; the head then trains on features.
        model.eval()
        features = _features(run, model, task, splits, normalizer, device, hooks)
        trainable = _HeadOnFeatures(model)
        inputs = Inputs(features, None, True, augment, image_size)
    else:
        images = {n: on_device_if_it_fits(s.images, device) for n, s in splits.used(run).items()}
        inputs = Inputs(images, normalizer, False, augment, image_size)
    steps = splits.steps_per_epoch(cfg.batch_size)
    session = Session(
        run=run,
        ddp=ddp,
        device=device,
        out_dir=out_dir,
        task=task,
        model=model,
        counts=counts,
        splits=splits,
        inputs=inputs,
        learner=_learner(run, trainable, device, ddp, steps),
    )
    return session, _loop_state(session, state, clock_start, progress)


def _check_global_batch(batch_size: int, ddp: Distributed) -> None:
    if ddp.enabled and batch_size < ddp.world_size:
        raise ConfigError(
            f"`batch_size` {batch_size} is the global batch; it must be at least the "
            f"number of processes ({ddp.world_size})"
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_task_at(cfg: TrainConfig, image_size: int) -> Task:
    """The run's task decoded at ``image_size``."""
    return load_task(
        cfg.data,
        image_size,
        seed=cfg.data_seed,
        progress=cfg.progress,
        val_fraction=cfg.val_fraction,
        cache=cfg.data_cache,
        quiet=int(os.environ.get("RANK", "0")) > 0,  # torchrun: rank 0 alone says it
    )


def input_norm(normalize: str, backbone: nn.Module, task: Task) -> InputNorm:
    """(mean, std) for a run: ``imagenet``, ``backbone`` (its pretrained statistics) or
    ``task`` (the task's protocol: ImageNet for VTAB-1k and FGVC, else the backbone's)."""
    if normalize == "task":
        normalize = task.normalization
    if normalize == "imagenet":
        return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
    cfg = resolve_data_config({}, model=backbone)
    return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])


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


class _HeadOnFeatures(nn.Module):
    """The classifier alone, trained on cached features (same parameter names)."""

    def __init__(self, model: PromptedModel) -> None:
        super().__init__()
        self.pre_head, self.head = model.pre_head, model.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pre_head(x))


def _backbone_and_task(
    run: ResolvedTrainConfig, task: Task | None
) -> tuple[nn.Module, Task, InputNorm, int]:
    """The pretrained backbone, the task at its input size (unless given), the run's
    input statistics and that input size."""
    cfg = run.config
    seed_everything(cfg.seed)
    backbone = create_backbone(cfg.backbone, weights=cfg.weights)
    image_size, _ = data_settings(backbone)
    if task is None:
        task = load_task_at(cfg, image_size)
    return backbone, task, input_norm(run.normalize, backbone, task), image_size


def _build_model(
    run: ResolvedTrainConfig,
    backbone: nn.Module,
    task: Task,
    norm: InputNorm,
    fresh: bool,
    hooks: TrainHooks,
) -> PromptedModel:
    """The method on the backbone, initialised from the seed (and changed by the caller's
    ``customize``). A resumed (not ``fresh``) run's tensors come from its saved state, so
    starting-weight files are not read."""
    seed_everything(run.config.seed)
    model = wrap(
        backbone,
        run.method if fresh else run.method.for_restore(),
        task.num_classes,
        global_pool=run.config.global_pool,
        head_init=run.head_init,
    )
    model.method_config = run.method
    model.input_norm = norm
    model.class_names = [str(c) for c in task.classes]
    if hooks.customize is not None:
        hooks.customize(model)
    return model


def _write_config(cfg: TrainConfig, out_dir: Path, identity: dict[str, Any] | None) -> None:
    """train_config.yaml (and what the run computes beyond it): a run folder's first files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / TRAIN_CONFIG_FILE, cfg.with_absolute_paths().to_yaml())
    if identity is not None:
        write_json(out_dir / RUN_IDENTITY_FILE, identity)


def _features(
    run: ResolvedTrainConfig,
    model: PromptedModel,
    task: Task,
    splits: Splits,
    normalizer: Normalizer,
    device: torch.device,
    hooks: TrainHooks,
) -> dict[str, torch.Tensor]:
    """The frozen backbone's features of every split used, computed once per backbone ×
    preprocessing × task and kept in the caller's ``feature_cache``."""
    cfg = run.config
    norm = model.input_norm
    key = (cfg.backbone, cfg.weights, cfg.global_pool, cfg.precision, norm, task.name, id(task))
    cache = hooks.feature_cache if hooks.feature_cache is not None else {}
    features = cache.setdefault(key, {})
    used = splits.used(run)
    for name, s in used.items():
        if name not in features:
            features[name] = predict(
                model.forward_pre_logits, s.images, device, cfg.precision, prepare=normalizer
            )
    return {name: features[name] for name in used}


def _learner(
    run: ResolvedTrainConfig,
    trainable: nn.Module,
    device: torch.device,
    ddp: Distributed,
    steps: int,
) -> Learner:
    """Optimizer, schedule and generator for ``trainable``; under torchrun it steps
    through DistributedDataParallel."""
    optimizer = build_optimizer(trainable, run, device)
    scheduler = build_scheduler(optimizer, run, steps)
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
    generator = torch.Generator().manual_seed(run.config.seed)
    return Learner(trainable, stepped, optimizer, scheduler, generator)


def _loop_state(
    session: Session, state: dict[str, Any] | None, clock_start: float, progress: Progress
) -> LoopState:
    """Epoch 1's loop state, or the saved one put back (model, optimizer, schedule and
    every generator included)."""
    if state is None:
        return LoopState(clock_start=clock_start)
    learner = session.learner
    restore(
        state,
        trainable=learner.trainable,
        optimizer=learner.optimizer,
        scheduler=learner.scheduler,
        generator=learner.generator,
        device=session.device,
    )
    loop = LoopState(
        clock_start=clock_start - float(state["train_seconds"]),  # every session's training
        epoch=int(state["epoch"]),
        update=int(state["update"]),
        metrics=list(state["metrics"]),
        val_acc=state["val_acc"],
    )
    progress.saved_epoch = loop.epoch
    note(
        f"resuming {session.out_dir} after epoch {loop.epoch} of {session.run.config.epochs}",
        quiet=not session.ddp.is_main,
        once=False,
    )
    return loop
