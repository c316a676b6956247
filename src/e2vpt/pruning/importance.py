"""Importance of every E²VPT visual token and segment, over the training split.

Gradient scores differentiate the training loss w.r.t. the token mask γ and segment
mask μ at their current values (ones, or as trained), where switching the masks on
leaves the outputs unchanged. ``ablation`` measures each token's effect directly."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from e2vpt.families import get_family, list_families
from e2vpt.layers.prompts import PRUNE_MODES, VisualPrompts
from e2vpt.methods.base import ConfigError
from e2vpt.methods.e2vpt import E2VPTConfig
from e2vpt.model import PromptedModel
from e2vpt.progressbars import progress_bar
from e2vpt.pruning.settings import SCORE_DEFINITIONS, SCORE_MODES


@dataclass
class ImportanceScores:
    """Per-entry scores; lower means pruned first (see :data:`SCORE_DEFINITIONS`).

    A deep prompt reaches the other tokens only through each block's LayerNorm, which
    is scale-invariant, so ∂L/∂γ of a token mask is zero up to the norm's eps: the
    gradient scores (official, abs, signed) rank tokens almost arbitrarily. ``ablation``
    measures each token's effect instead."""

    token: torch.Tensor  # (tokens,)
    segment: torch.Tensor  # (tokens, R)
    mode: str
    batches: int
    images: int
    prune_mode: str = "remove"

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "definition": SCORE_DEFINITIONS[self.mode],
            "prune_mode": self.prune_mode,
            "batches": self.batches,
            "images": self.images,
            "token": self.token.tolist(),
            "segment": self.segment.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImportanceScores:
        return cls(
            token=torch.tensor(data["token"], dtype=torch.float64),
            segment=torch.tensor(data["segment"], dtype=torch.float64),
            mode=str(data["mode"]),
            batches=int(data["batches"]),
            images=int(data["images"]),
            prune_mode=str(data.get("prune_mode", "remove")),
        )


def prunable_prompts(model: PromptedModel) -> VisualPrompts:
    """The E²VPT model's maskable visual prompts (a family without them cannot prune)."""
    if not isinstance(model.method_config, E2VPTConfig):
        raise ConfigError(
            f"pruning needs an e2vpt model (visual prompts with token/segment masks); this "
            f"one is {model.method_name!r}. Train with --method e2vpt first"
        )
    prompts = model.visual_prompts
    if prompts is None or prompts.mask_segments is None:
        prunable = " and ".join(f for f in list_families() if get_family(f).prunable_prompts)
        raise ConfigError(
            f"prompt pruning is implemented for ViT backbones (the {prunable} families); "
            f"{model.backbone_name} is a {model.backbone_signature['class']}. Train E²VPT "
            "on it without pruning"
        )
    if prompts.pruned:
        raise ConfigError("this model is already pruned; prune the unpruned e2vpt run")
    return prompts


def importance_scores(
    model: PromptedModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 64,
    mode: str = "ablation",
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    prune_mode: str = "remove",
    seed: int = 0,
) -> ImportanceScores:
    """Score every token and segment over the batches of ``images`` in order (L: a
    batch's mean cross-entropy), dropout off so the scores are deterministic.
    ``prune_mode`` says what pruning a token will mean (``ablation`` measures that)."""
    if mode not in SCORE_MODES:
        raise ConfigError(f"importance score must be one of {SCORE_MODES}, got {mode!r}")
    if prune_mode not in PRUNE_MODES:
        raise ConfigError(f"prune mode must be one of {PRUNE_MODES}, got {prune_mode!r}")
    prompts = prunable_prompts(model)
    if len(images) == 0:
        raise ConfigError("importance scores need at least one training image")
    device = torch.device(device)
    n_batches = math.ceil(len(images) / batch_size)
    if mode == "random":
        generator = torch.Generator().manual_seed(seed)
        token = torch.rand(prompts.token_mask.shape, generator=generator, dtype=torch.float64)
        segment = torch.rand(prompts.segment_mask.shape, generator=generator, dtype=torch.float64)
        return ImportanceScores(token, segment, mode, n_batches, len(images), prune_mode)

    def batches() -> Any:
        starts = range(0, len(images), batch_size)
        bar = progress_bar(
            starts, show=progress, desc=f"importance ({mode})", unit="batch", leave=False
        )
        for start in bar:
            x = images[start : start + batch_size].to(device)
            if prepare is not None:
                x = prepare(x)
            yield x, labels[start : start + batch_size].to(device)

    was_training, was_active = model.training, prompts.masks_active
    masks = (prompts.token_mask, prompts.segment_mask)
    had_grad = [m.requires_grad for m in masks]
    sums = [torch.zeros(m.shape, dtype=torch.float64) for m in masks]
    base_loss = 0.0
    model.eval()
    prompts.masks_active = True
    for m in masks:
        m.requires_grad_(True)
    try:
        for x, y in batches():
            loss = F.cross_entropy(model(x).float(), y)
            grads = torch.autograd.grad(loss, list(masks))
            base_loss += loss.item() * len(y)
            for total, grad in zip(sums, grads, strict=True):
                g = grad.double().cpu()
                total += g.abs() if mode == "abs" else g if mode == "official" else -g
        token, segment = (total / n_batches for total in sums)
        if mode == "ablation":
            token = _ablation(model, prompts, batches, prune_mode, base_loss, len(images))
    finally:
        for m, grad in zip(masks, had_grad, strict=True):
            m.requires_grad_(grad)
        prompts.masks_active = was_active
        model.train(was_training)
    return ImportanceScores(token, segment, mode, n_batches, len(images), prune_mode)


@torch.no_grad()
def _ablation(
    model: PromptedModel,
    prompts: VisualPrompts,
    batches: Callable[[], Any],
    prune_mode: str,
    base_loss: float,
    count: int,
) -> torch.Tensor:
    """Rise of the mean training loss with each token taken out (left out of every
    layer's sequence, or zeroed in ``zero`` mode), one forward pass per token."""
    rises = torch.zeros(prompts.tokens, dtype=torch.float64)
    for token in range(prompts.tokens):
        if prune_mode == "remove":
            context: Any = prompts.leaving_out(token)
        else:
            context = _zeroed(prompts, token)
        with context:
            loss = sum(
                F.cross_entropy(model(x).float(), y, reduction="sum").item() for x, y in batches()
            )
        rises[token] = (loss - base_loss) / count
    return rises


@contextmanager
def _zeroed(prompts: VisualPrompts, token: int) -> Iterator[None]:
    """Token ``token`` as a zero vector in every layer for a moment (``zero`` mode)."""
    saved = prompts.token_mask[token].clone()
    prompts.token_mask.data[token] = 0.0
    try:
        yield
    finally:
        prompts.token_mask.data[token] = saved
