"""Importance of every E²VPT mask entry: gradients of the training loss w.r.t. γ and μ.

The masks are all ones, so switching them on leaves the model's outputs unchanged;
their gradient says how much the loss leans on each token / segment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from e2vpt.layers.prompts import VisualPrompts
from e2vpt.methods.base import ConfigError
from e2vpt.model import PromptedViT

SCORE_MODES = ("abs", "signed")


@dataclass
class ImportanceScores:
    """Per-entry scores; lower means pruned first.

    ``abs``: mean over batches of |∂L/∂γ| (the paper). ``signed``: mean over batches of
    −∂L/∂γ, the first-order estimate of how much the loss rises when the entry is
    removed (γ: 1 → 0), so that here too lower = safer to drop."""

    token: torch.Tensor  # (tokens,)
    segment: torch.Tensor  # (tokens, R)
    mode: str
    batches: int
    images: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
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
        )


def prunable_prompts(model: PromptedViT) -> VisualPrompts:
    if not isinstance(model, PromptedViT):
        raise ConfigError(
            f"prompt pruning is implemented for ViT backbones; {model.backbone_name} is a "
            f"{model.backbone_signature['class']}. Train E²VPT on it without pruning"
        )
    prompts = model.visual_prompts
    if prompts is None or prompts.mask_segments is None:
        raise ConfigError(
            f"pruning needs an e2vpt model (visual prompts with token/segment masks); this "
            f"one is {model.method_name!r}. Train with --method e2vpt first"
        )
    if prompts.pruned:
        raise ConfigError("this model is already pruned; prune the unpruned e2vpt run")
    return prompts


def importance_scores(
    model: PromptedViT,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 64,
    mode: str = "abs",
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> ImportanceScores:
    """Accumulate ∂L/∂γ and ∂L/∂μ (L: mean cross-entropy of one batch) over the batches
    of ``images`` in order, with dropout off so the scores are deterministic."""
    if mode not in SCORE_MODES:
        raise ConfigError(f"importance score must be one of {SCORE_MODES}, got {mode!r}")
    prompts = prunable_prompts(model)
    if len(images) == 0:
        raise ConfigError("importance scores need at least one training image")
    device = torch.device(device)
    was_training, was_active = model.training, prompts.masks_active
    token_mask, segment_mask = prompts.token_mask, prompts.segment_mask
    token_sum = torch.zeros(token_mask.shape, dtype=torch.float64)
    segment_sum = torch.zeros(segment_mask.shape, dtype=torch.float64)
    model.eval()
    prompts.masks_active = True
    token_mask.requires_grad_(True)
    segment_mask.requires_grad_(True)
    batches = 0
    try:
        starts = range(0, len(images), batch_size)
        for start in tqdm(starts, disable=not progress, desc="importance", unit="batch"):
            x = images[start : start + batch_size].to(device)
            y = labels[start : start + batch_size].to(device)
            if prepare is not None:
                x = prepare(x)
            loss = F.cross_entropy(model(x).float(), y)
            g_token, g_segment = torch.autograd.grad(loss, [token_mask, segment_mask])
            if mode == "abs":
                token_sum += g_token.abs().double().cpu()
                segment_sum += g_segment.abs().double().cpu()
            else:
                token_sum -= g_token.double().cpu()
                segment_sum -= g_segment.double().cpu()
            batches += 1
    finally:
        token_mask.requires_grad_(False)
        segment_mask.requires_grad_(False)
        prompts.masks_active = was_active
        model.train(was_training)
    return ImportanceScores(
        token=token_sum / batches,
        segment=segment_sum / batches,
        mode=mode,
        batches=batches,
        images=len(images),
    )
