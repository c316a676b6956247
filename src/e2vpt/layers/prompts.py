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
    ``masks_active`` is switched on by pruning.
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

    def forward(self, layer: int, batch_size: int) -> torch.Tensor:
        """Prompts for block ``layer`` as a (batch, tokens, dim) tensor."""
        prompts = self.prompts[layer]
        if self.proj is not None:
            prompts = self.proj(prompts)
        if self.masks_active:
            prompts = prompts * self.mask().to(prompts.dtype)
        return self.dropout(prompts.unsqueeze(0).expand(batch_size, -1, -1))
