"""Visual prompt tokens (VPT shallow/deep, E²VPT) and the place for E²VPT's pruning masks."""

from __future__ import annotations

import math

import torch
from torch import nn


def prompt_init_bound(patch_size: tuple[int, int], dim: int) -> float:
    """VPT's Xavier-style bound v = sqrt(6 / (3·P·P + d)) (0.0625 for ViT-B/16)."""
    return math.sqrt(6.0 / (3 * patch_size[0] * patch_size[1] + dim))


class VisualPrompts(nn.Module):
    """``num_layers`` sets of ``tokens`` prompts of width ``dim`` (1 set = shallow).

    With ``mask_segments`` set, it also holds E²VPT's token mask γ (tokens,) and
    segment mask μ (tokens, R). They are buffers (never optimised, never counted as
    tunable), shared by all layers, and multiply the prompts only once
    ``masks_active`` is switched on (importance scoring, or after :meth:`prune`).

    :meth:`prune` makes the pruning real: dropped tokens leave the parameter (and so
    the sequence of every block), dropped segments stay as zeros that the mask keeps
    at zero, and :meth:`sparse_state` stores only the surviving values.
    """

    def __init__(
        self,
        num_layers: int,
        tokens: int,
        dim: int,
        patch_size: tuple[int, int],
        dropout: float = 0.0,
        project: bool = False,
        mask_segments: int | None = None,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.tokens = tokens
        self.dim = dim
        bound = prompt_init_bound(patch_size, dim)
        self.prompts = nn.Parameter(torch.empty(num_layers, tokens, dim))
        nn.init.uniform_(self.prompts, -bound, bound)
        self.dropout = nn.Dropout(dropout)
        self.proj: nn.Linear | None = None
        if project:
            self.proj = nn.Linear(dim, dim)
            nn.init.kaiming_normal_(self.proj.weight, a=0, mode="fan_out")
            nn.init.zeros_(self.proj.bias)
        self.mask_segments = mask_segments
        self.masks_active = False
        self.original_tokens = tokens
        self.kept_tokens: torch.Tensor | None = None  # original indices, once pruned
        if mask_segments is not None:
            self.register_buffer("token_mask", torch.ones(tokens))
            self.register_buffer("segment_mask", torch.ones(tokens, mask_segments))
            # contiguous segments of (almost) equal width for any d
            segment_of_dim = torch.arange(dim) * mask_segments // dim
            self.register_buffer("segment_of_dim", segment_of_dim, persistent=False)

    def mask(self) -> torch.Tensor:
        """The (tokens, dim) multiplier built from γ and μ."""
        per_dim = self.segment_mask[:, self.segment_of_dim]
        return self.token_mask[:, None] * per_dim

    @property
    def pruned(self) -> bool:
        return self.kept_tokens is not None

    def prune(self, kept_tokens: torch.Tensor, segment_mask: torch.Tensor) -> None:
        """Keep only the tokens ``kept_tokens`` (original indices, ascending) and, within
        them, the segments where ``segment_mask`` (len(kept_tokens), R) is true.

        The prompt parameter is replaced by a smaller one; build the optimizer after
        pruning. Dropped segments are zeroed and the mask keeps them at zero (no
        gradient reaches them), so they are not stored either."""
        if self.mask_segments is None:
            raise ValueError("these prompts have no pruning masks (only E²VPT's do)")
        if self.pruned:
            raise ValueError("these prompts are already pruned; prune the unpruned model")
        kept = torch.as_tensor(kept_tokens, dtype=torch.long).flatten().cpu()
        segments = torch.as_tensor(segment_mask).to(torch.bool).cpu()
        if kept.numel() < 1 or kept.unique().numel() != kept.numel():
            raise ValueError(f"kept_tokens must be distinct token indices, got {kept.tolist()}")
        if kept.min() < 0 or kept.max() >= self.tokens:
            raise ValueError(f"kept_tokens must lie in [0, {self.tokens}), got {kept.tolist()}")
        if not torch.all(kept[1:] > kept[:-1]):
            raise ValueError(f"kept_tokens must be ascending, got {kept.tolist()}")
        if segments.shape != (kept.numel(), self.mask_segments):
            raise ValueError(
                f"segment_mask must have shape ({kept.numel()}, {self.mask_segments}), "
                f"got {tuple(segments.shape)}"
            )
        if not torch.all(segments.any(dim=1)):
            raise ValueError("every kept token must keep at least one segment")
        device = self.prompts.device
        with torch.no_grad():
            self.token_mask = torch.ones(kept.numel(), device=device)
            self.segment_mask = segments.to(device=device, dtype=self.segment_mask.dtype)
            values = self.prompts[:, kept.to(device)] * self.mask().to(self.prompts.dtype)
        self.prompts = nn.Parameter(values.contiguous(), requires_grad=self.prompts.requires_grad)
        self.tokens = kept.numel()
        self.kept_tokens = kept  # on the CPU: only checkpoints read it
        self.masks_active = True

    def kept_values_mask(self) -> torch.Tensor:
        """(tokens, dim) bool: which prompt entries survive pruning."""
        return self.mask() != 0

    def stored_numel(self) -> int:
        """Prompt values a checkpoint stores: only the surviving ones once pruned."""
        if not self.pruned:
            return self.prompts.numel()
        return self.num_layers * int(self.kept_values_mask().sum())

    def sparse_state(self) -> dict[str, torch.Tensor]:
        """A pruned model's prompts as surviving values (layer-major) + what survived."""
        assert self.pruned and self.kept_tokens is not None
        return {
            "prompt_values": self.prompts.detach()[:, self.kept_values_mask()].flatten(),
            "kept_tokens": self.kept_tokens,
            "kept_segments": (self.segment_mask != 0).to(torch.uint8),
        }

    def load_sparse_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`sparse_state` on a model already pruned the same way."""
        keep = self.kept_values_mask()
        values = state["prompt_values"]
        expected = self.num_layers * int(keep.sum())
        if values.numel() != expected:
            raise ValueError(
                f"prompt_values holds {values.numel()} values but the pruned structure "
                f"needs {expected}"
            )
        with torch.no_grad():
            self.prompts.zero_()
            self.prompts[:, keep] = values.view(self.num_layers, -1).to(self.prompts)

    def forward(self, layer: int, batch_size: int) -> torch.Tensor:
        """Prompts for block ``layer`` as a (batch, tokens, dim) tensor."""
        prompts = self.prompts[layer]
        if self.proj is not None:
            prompts = self.proj(prompts)
        if self.masks_active:
            prompts = prompts * self.mask().to(prompts.dtype)
        return self.dropout(prompts.unsqueeze(0).expand(batch_size, -1, -1))
