"""Resumable training: after every epoch the trainer writes everything it needs to go on
(the tuned tensors, optimizer and scheduler state, every random generator, the epoch and
the metrics so far) to ``train_state.pt``, atomically. A run resumed from it continues
bit for bit where the uninterrupted run would have been (on CPU; tested)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from e2vpt.errors import ConfigError
from e2vpt.files import atomic_write_with

STATE_FORMAT = 1


def capture(
    *,
    epoch: int,
    update: int,
    trainable: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    device: torch.device,
    metrics: list[dict[str, Any]],
    val_acc: float | None,
    train_seconds: float,
) -> dict[str, Any]:
    """The state after ``epoch`` epochs (plain tensors and Python values only, so it
    loads with ``torch.load(weights_only=True)``)."""
    numpy_state = np.random.get_state()
    return {
        "format": STATE_FORMAT,
        "epoch": epoch,
        "update": update,
        "tunable": {
            n: p.detach().to("cpu", copy=True)
            for n, p in trainable.named_parameters()
            if p.requires_grad
        },
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {
            "generator": generator.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "python": random.getstate(),
            "numpy": {
                "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
                "pos": int(numpy_state[2]),
                "has_gauss": int(numpy_state[3]),
                "cached_gaussian": float(numpy_state[4]),
            },
        },
        "metrics": metrics,
        "val_acc": val_acc,
        "train_seconds": train_seconds,
    }


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Streamed into a temp file, then renamed (a full disk: DiskFullError, no temp file)."""
    atomic_write_with(path, lambda handle: torch.save(state, handle))


def read_state(path: Path) -> dict[str, Any] | None:
    """The saved state, or None when there is none; an unreadable one is an error."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: torch raises many kinds
        raise ConfigError(
            f"{path} is unreadable ({type(err).__name__}); delete it to restart the run from "
            "epoch 1, or pass `overwrite`"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ConfigError(f"{path} is not a training state this e2vpt writes; pass `overwrite`")
    return state


def restore(
    state: dict[str, Any],
    *,
    trainable: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    device: torch.device,
) -> None:
    """Put the model, optimizer, scheduler and every generator back as they were."""
    params = {n: p for n, p in trainable.named_parameters() if p.requires_grad}
    saved = state["tunable"]
    if set(saved) != set(params) or any(saved[n].shape != p.shape for n, p in params.items()):
        raise ConfigError(
            "the saved training state does not fit this run's model (another method or "
            "backbone); pass `overwrite` to start afresh"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(saved[name])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    generator.set_state(rng["generator"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
    random.setstate(_as_tuple(rng["python"]))
    numpy_state = rng["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )


def _as_tuple(value: Any) -> Any:
    """random.setstate wants tuples where a round trip may have made lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value
