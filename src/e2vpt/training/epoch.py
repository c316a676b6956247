"""The epoch loop: one epoch a call (its steps, metrics row, validation and saved state)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from e2vpt.data.augment import augment_batch
from e2vpt.errors import DivergedError
from e2vpt.inference import autocast, batches, predict
from e2vpt.progressbars import Bar, milestone, progress_bar
from e2vpt.reporting import write_csv, write_json
from e2vpt.runs import METRICS_CSV_FILE, METRICS_JSON_FILE, TRAIN_STATE_FILE
from e2vpt.training.distributed import Distributed
from e2vpt.training.resume import capture, write_state
from e2vpt.training.session import LoopState, Progress, Session
from e2vpt.training.tracking import Tracker

# the progress bar's loss is read back from the device every this many steps
PROGRESS_EVERY = 10


def run_epochs(
    session: Session,
    loop: LoopState,
    progress: Progress,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    tracker: Tracker,
) -> None:
    """Train from the epoch after ``loop.epoch`` to the last, under one progress bar
    (in a log file: a line per epoch), its curves logged through ``tracker``."""
    cfg, steps = session.run.config, session.steps_per_epoch
    with progress_bar(
        initial=loop.epoch * steps,
        total=cfg.epochs * steps,
        show=cfg.progress and session.ddp.is_main,
        desc=f"train {session.run.method.method_name}",
        unit="step",
    ) as bar:  # closed on Ctrl-C too, so the message comes after it
        for epoch in range(loop.epoch, cfg.epochs):
            row = run_epoch(session, loop, epoch, bar, tracker)
            milestone(bar)
            if cfg.state_every and (epoch + 1) % cfg.state_every == 0:
                _save_state(session, loop)
                progress.saved_epoch = epoch + 1
            if on_epoch is not None:
                on_epoch(row)


def run_epoch(
    session: Session, loop: LoopState, epoch: int, bar: Bar, tracker: Tracker
) -> dict[str, Any]:
    """Epoch ``epoch`` (from 0): its steps, then validation; its metrics row is added to
    ``loop.metrics``, rewritten to the run folder and logged to ``tracker``."""
    session.learner.trainable.train()
    epoch_start = time.perf_counter()
    row = _train_steps(session, loop, epoch, bar, tracker)
    val = session.splits.val
    if val is not None:
        session.learner.trainable.eval()
        loop.val_acc = split_top1(session, session.run.config.val_split, val.labels)
        row["val_top1"] = loop.val_acc
        bar.set_postfix(
            epoch=epoch + 1, loss=f"{row['train_loss']:.3f}", val=f"{100 * loop.val_acc:.1f}%"
        )
    row["epoch_seconds"] = time.perf_counter() - epoch_start
    loop.metrics.append(row)
    loop.epoch = epoch + 1
    tracker.log_epoch(loop.update, row)
    if session.ddp.is_main:
        out_dir, metrics = session.out_dir, loop.metrics
        write_json(out_dir / METRICS_JSON_FILE, metrics)
        write_csv(out_dir / METRICS_CSV_FILE, metrics)
    return row


def _train_steps(
    session: Session, loop: LoopState, epoch: int, bar: Bar, tracker: Tracker
) -> dict[str, Any]:
    """One pass over the training split; the row of its lr, mean loss and top-1. Each
    update's loss and lr go to ``tracker`` at the end (one host sync an epoch)."""
    run, learner, device = session.run, session.learner, session.device
    if run.per_epoch_schedule:  # the official schedule: one lr for the whole epoch
        learner.scheduler.step(epoch)
    # running sums stay on the device: no host sync per step, so on a GPU the next
    # batch is prepared while this one computes
    loss_total = torch.zeros((), dtype=torch.float64, device=device)
    correct_total = torch.zeros((), dtype=torch.long, device=device)
    seen, first_update = 0, loop.update + 1
    update_losses: list[torch.Tensor] = []
    update_lrs: list[float] = []
    n = len(session.splits.train)
    for step, idx in enumerate(batches(n, run.config.batch_size, learner.generator)):
        x, y = _batch(session, idx)
        lr = learner.optimizer.param_groups[0]["lr"]
        local_loss, logits = _step(session, x, y, len(idx))
        if tracker.active:
            update_losses.append(local_loss.detach() / max(len(y), 1))
            update_lrs.append(lr)
        loop.update += 1
        if not run.per_epoch_schedule:
            learner.scheduler.step_update(loop.update)
        loss_total += local_loss.detach()
        correct_total += (logits.detach().argmax(-1) == y).sum()
        seen += len(y)
        bar.update(1)
        if step % PROGRESS_EVERY == 0:
            shown = local_loss.item() / max(len(y), 1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{shown:.3f}")
    if update_losses:
        tracker.log_updates(first_update, torch.stack(update_losses).tolist(), update_lrs)
    loss_sum, correct, total = session.ddp.sum(
        [loss_total.item(), float(correct_total.item()), float(seen)], device
    )
    row: dict[str, Any] = {
        "epoch": epoch + 1,
        "lr": learner.optimizer.param_groups[0]["lr"],
        "train_loss": loss_sum / total,
        "train_top1": correct / total,
    }
    if not math.isfinite(row["train_loss"]):
        raise DivergedError(
            f"training diverged (loss {row['train_loss']}) at epoch {epoch + 1}; lower --base-lr"
        )
    return row


def _batch(session: Session, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Training batch ``idx``: this rank's share, on the device and ready for the model."""
    inputs, train, ddp = session.inputs, session.splits.train, session.ddp
    source = inputs.tensors[session.run.config.train_split]
    if inputs.cached:
        x = source[idx]
    else:  # the global batch, so every rank's generator stays in step
        generator = session.learner.generator
        x = augment_batch(inputs.augment, source, train.crops, idx, generator, inputs.image_size)
    x, y = ddp.shard(x), ddp.shard(train.labels[idx])
    x = x.to(session.device, non_blocking=True)
    y = y.to(session.device, non_blocking=True)
    if inputs.prepare is not None:
        x = inputs.prepare(x)
    return x, y


def _step(
    session: Session, x: torch.Tensor, y: torch.Tensor, global_batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer update; this rank's summed loss and its logits."""
    learner, ddp = session.learner, session.ddp
    with autocast(session.device, session.run.config.precision):
        logits = learner.stepped(x)
    local_loss = F.cross_entropy(logits.float(), y, reduction="sum")
    # DDP averages gradients over ranks: this makes it the global batch mean's
    loss = local_loss * (ddp.world_size / global_batch)
    learner.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    learner.optimizer.step()
    return local_loss, logits


def _save_state(session: Session, loop: LoopState) -> None:
    """What resuming after this epoch needs (rank 0 writes it)."""
    if not session.ddp.is_main:
        return
    learner, out_dir = session.learner, session.out_dir
    snapshot = capture(
        epoch=loop.epoch,
        update=loop.update,
        trainable=learner.trainable,
        optimizer=learner.optimizer,
        scheduler=learner.scheduler,
        generator=learner.generator,
        device=session.device,
        metrics=loop.metrics,
        val_acc=loop.val_acc,
        train_seconds=time.perf_counter() - loop.clock_start,
    )
    write_state(out_dir / TRAIN_STATE_FILE, snapshot)


def split_top1(session: Session, name: str | None, labels: torch.Tensor) -> float:
    """Top-1 of the trained module over split ``name`` (its inputs, these labels)."""
    assert name is not None
    return sharded_top1(
        session.learner.trainable,
        session.inputs.tensors[name],
        labels,
        session.device,
        session.run.config.precision,
        session.inputs.prepare,
        session.ddp,
    )


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
