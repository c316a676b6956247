"""Optimiser and schedule as in the papers: SGD (momentum 0.9) or AdamW for `full`,
linear warm-up then cosine (timm's scheduler), lr = base_lr × batch / 256, no weight
decay on the head bias."""

from __future__ import annotations

import torch
from timm.scheduler import CosineLRScheduler
from torch import nn

from e2vpt.model import PromptedModel
from e2vpt.training.config import ResolvedTrainConfig


def parameter_groups(model: PromptedModel | nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name == "head.bias" else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(
    model: PromptedModel | nn.Module, run: ResolvedTrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """The run's optimiser at its peak lr, fused on CUDA."""
    groups = parameter_groups(model, run.config.weight_decay)
    fused = device.type == "cuda"
    if run.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=run.lr, fused=fused)
    return torch.optim.SGD(groups, lr=run.lr, momentum=run.config.momentum, fused=fused)


def build_scheduler(
    optimizer: torch.optim.Optimizer, run: ResolvedTrainConfig, steps_per_epoch: int
) -> CosineLRScheduler:
    """Linear warm-up from 0 for ``warmup_epochs``, then cosine to 0 over the rest.

    ``lr_schedule_unit`` ``update``: the lr changes every update (``step_update``).
    ``epoch`` (the official code): ``step(e)`` at the start of epoch e sets e/W · lr
    during warm-up, then 0.5·(1 + cos(π(e − W)/(T − W))) · lr, for the whole epoch."""
    per_epoch = run.per_epoch_schedule
    unit = 1 if per_epoch else steps_per_epoch
    warmup = run.warmup_epochs * unit
    total = run.config.epochs * unit
    return CosineLRScheduler(
        optimizer,
        t_initial=max(1, total - warmup),
        lr_min=0.0,
        warmup_t=warmup,
        warmup_lr_init=0.0,
        warmup_prefix=True,
        t_in_epochs=per_epoch,
    )
