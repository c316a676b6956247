"""Optimiser and schedule as in the papers: SGD (momentum 0.9) or AdamW for `full`,
linear warm-up then cosine (timm's scheduler), lr = base_lr × batch / 256, no weight
decay on the head bias."""

from __future__ import annotations

import torch
from timm.scheduler import CosineLRScheduler
from torch import nn

from e2vpt.model import PromptedModel
from e2vpt.training.config import TrainConfig


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
    model: PromptedModel | nn.Module, cfg: TrainConfig, optimizer: str, device: torch.device
) -> torch.optim.Optimizer:
    lr = cfg.resolved_base_lr() * cfg.batch_size / 256
    groups = parameter_groups(model, cfg.weight_decay)
    fused = device.type == "cuda"
    if optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=fused)
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, fused=fused)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> CosineLRScheduler:
    """Stepped per update: warm-up for ``warmup_epochs``, cosine to 0 over the rest."""
    warmup = cfg.resolved_warmup_epochs() * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    return CosineLRScheduler(
        optimizer,
        t_initial=max(1, total - warmup),
        lr_min=0.0,
        warmup_t=warmup,
        warmup_lr_init=0.0,
        warmup_prefix=True,
        t_in_epochs=False,
    )
