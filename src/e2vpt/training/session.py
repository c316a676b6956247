"""What a training run's phases hand each other: setup builds a :class:`Session` and a
:class:`LoopState`, the epoch loop advances the state, finishing reads both."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.scheduler import CosineLRScheduler
from torch import nn

from e2vpt.accounting import ParameterCount
from e2vpt.data import Split, Task
from e2vpt.model import PromptedModel
from e2vpt.training.config import ResolvedTrainConfig
from e2vpt.training.distributed import Distributed
from e2vpt.training.tracking import Tracker


@dataclass(frozen=True)
class TrainHooks:
    """What a caller adds to a run: ``feature_cache`` lets several linear probes of one
    backbone × task share features; ``customize`` changes the freshly initialised model
    before the optimizer is built (pruning's rewind trains a pruned model from the
    original init); ``on_epoch`` sees every epoch's metrics row (a Ray Tune trial reports
    them, so ASHA can stop it); ``tracker`` gets the run's curves besides TensorBoard
    (see :mod:`e2vpt.training.tracking`)."""

    feature_cache: dict[tuple, dict[str, torch.Tensor]] | None = None
    customize: Callable[[PromptedModel], object] | None = None
    on_epoch: Callable[[dict[str, Any]], None] | None = None
    tracker: Tracker | None = None


@dataclass
class Progress:
    """How far the run's saved state goes, for the message when it is interrupted."""

    saved_epoch: int = 0


@dataclass(frozen=True)
class Splits:
    """The task's splits this run uses: trained on, validated every epoch, evaluated last."""

    train: Split
    val: Split | None
    eval: Split | None

    @classmethod
    def of(cls, task: Task, run: ResolvedTrainConfig) -> Splits:
        cfg = run.config
        return cls(
            train=task.split(cfg.train_split),
            val=task.split(cfg.val_split)
            if cfg.val_split and task.has_split(cfg.val_split)
            else None,
            eval=task.split(cfg.eval_split)
            if cfg.eval_split and task.has_split(cfg.eval_split)
            else None,
        )

    def steps_per_epoch(self, batch_size: int) -> int:
        """Training steps in an epoch (the last batch may be short)."""
        return math.ceil(len(self.train) / batch_size)

    def used(self, run: ResolvedTrainConfig) -> dict[str, Split]:
        """Split name → split, for the splits the task has."""
        cfg = run.config
        named = (
            (cfg.train_split, self.train),
            (cfg.val_split, self.val),
            (cfg.eval_split, self.eval),
        )
        return {name: split for name, split in named if split is not None}


@dataclass(frozen=True)
class Inputs:
    """What batches are made of: images (on the device when they fit), or the frozen
    backbone's features when only the head trains (``cached``); ``prepare`` normalises
    a batch of images on the device (None for features)."""

    tensors: dict[str, torch.Tensor]
    prepare: Callable[[torch.Tensor], torch.Tensor] | None
    cached: bool
    augment: str
    image_size: int


@dataclass(frozen=True)
class Learner:
    """What the steps change: the module trained (``stepped`` is it under DDP), its
    optimizer and schedule, and the generator that shuffles and augments."""

    trainable: nn.Module
    stepped: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    generator: torch.Generator


@dataclass(frozen=True)
class Session:
    """Everything the phases after setup read; nothing in it changes between epochs
    but the tensors the learner trains."""

    run: ResolvedTrainConfig
    ddp: Distributed
    device: torch.device
    out_dir: Path
    task: Task
    model: PromptedModel
    counts: ParameterCount
    splits: Splits
    inputs: Inputs
    learner: Learner

    @property
    def steps_per_epoch(self) -> int:
        return self.splits.steps_per_epoch(self.run.config.batch_size)


@dataclass
class LoopState:
    """What the epoch loop carries from one epoch to the next (and a resumed run gets
    back from its saved state). ``clock_start``: when training began, on the
    ``time.perf_counter`` clock, moved back by the seconds earlier sessions trained."""

    clock_start: float
    epoch: int = 0  # epochs done
    update: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    val_acc: float | None = None
