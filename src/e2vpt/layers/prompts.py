"""Visual prompt tokens (VPT shallow/deep, E²VPT) and the place for E²VPT's pruning masks."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from e2vpt.layers.settings import PRUNE_MODES, SEGMENT_LAYOUTS


def prompt_init_bound(patch_size: tuple[int, int], dim: int) -> float:
    """VPT's Xavier-style bound v = sqrt(6 / (3·P·P + d)) (0.0625 for ViT-B/16)."""
    return math.sqrt(6.0 / (3 * patch_size[0] * patch_size[1] + dim))


def segment_of_dims(dim: int, segments: int, layout: str) -> torch.Tensor:
    """Which of the ``segments`` mask segments each of the ``dim`` prompt dimensions
    belongs to: ``interleaved`` (dimension j → j mod R, as the official E²VPT code) or
    ``contiguous`` (R blocks of almost equal width)."""
    if layout == "interleaved":
        return torch.arange(dim) % segments
    if layout == "contiguous":
        return torch.arange(dim) * segments // dim
    raise ValueError(f"segment layout must be one of {SEGMENT_LAYOUTS}, got {layout!r}")


class VisualPrompts(nn.Module):
    """``num_layers`` sets of ``tokens`` prompts of width ``dim`` (1 set = shallow).

    With ``mask_segments`` set, it also holds E²VPT's token mask γ (tokens,) and
    segment mask μ (tokens, R), shared by all layers. With ``train_masks`` they are
    parameters that multiply the prompts from the start and learn with them (the
    official E²VPT recipe); otherwise buffers at one that multiply the prompts only once
    ``masks_active`` is switched on (importance scoring, or after :meth:`prune`).

    :meth:`prune` makes the pruning real. ``remove`` mode: dropped tokens leave the
    parameter (and so the sequence of every block). ``zero`` mode (the official code):
    they stay in the sequence as zero vectors. Dropped segments stay as zeros that the
    mask keeps at zero, and :meth:`sparse_state` stores only the surviving values.
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
        segment_layout: str = "interleaved",
        train_masks: bool = False,
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
        self.segment_layout = segment_layout
        self.masks_active = False
        self.original_tokens = tokens
        self.kept_tokens: torch.Tensor | None = None  # original indices, once pruned
        self.prune_mode: str | None = None  # remove | zero, once pruned
        # tokens left out of the forward for a moment (importance by ablation)
        self._left_out: torch.Tensor | None = None
        if mask_segments is not None:
            self._set_masks(torch.ones(tokens), torch.ones(tokens, mask_segments), train_masks)
            self.masks_active = train_masks
            layout = segment_of_dims(dim, mask_segments, segment_layout)
            self.register_buffer("segment_of_dim", layout, persistent=False)

    def _set_masks(self, token_mask: torch.Tensor, segment_mask: torch.Tensor, train: bool) -> None:
        """(Re)register γ and μ as parameters (trained) or buffers (fixed)."""
        for name, value in (("token_mask", token_mask), ("segment_mask", segment_mask)):
            self._parameters.pop(name, None)
            self._buffers.pop(name, None)
            if train:
                self.register_parameter(name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    @property
    def masks_trained(self) -> bool:
        return "token_mask" in self._parameters

    def mask(self) -> torch.Tensor:
        """The (tokens, dim) multiplier built from γ and μ."""
        per_dim = self.segment_mask[:, self.segment_of_dim]
        return self.token_mask[:, None] * per_dim

    @property
    def pruned(self) -> bool:
        return self.kept_tokens is not None

    def prune(
        self, kept_tokens: torch.Tensor, segment_mask: torch.Tensor, mode: str = "remove"
    ) -> None:
        """Keep only the tokens ``kept_tokens`` (original indices, ascending) and, within
        them, the segments where ``segment_mask`` (len(kept_tokens), R) is true.

        ``remove``: the prompt parameter is replaced by a smaller one. ``zero``: every
        token stays, the dropped ones as zeros. Build the optimizer after pruning. The
        surviving values keep any trained mask's scale baked in; from then on the masks
        are fixed 0/1 buffers, so no gradient (and no weight decay) reaches what was
        pruned, and it is not stored either."""
        if self.mask_segments is None:
            raise ValueError("these prompts have no pruning masks (only E²VPT's do)")
        if self.pruned:
            raise ValueError("these prompts are already pruned; prune the unpruned model")
        if mode not in PRUNE_MODES:
            raise ValueError(f"prune mode must be one of {PRUNE_MODES}, got {mode!r}")
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
            trained_scale = self.mask().detach() if self.masks_active else None
            if mode == "remove":
                token_mask = torch.ones(kept.numel())
                new_segments = segments.float()
                rows = kept
            else:
                token_mask = torch.zeros(self.tokens)
                token_mask[kept] = 1.0
                new_segments = torch.zeros(self.tokens, self.mask_segments)
                new_segments[kept] = segments.float()
                rows = torch.arange(self.tokens)
            values = self.prompts[:, rows.to(device)]
            if trained_scale is not None:
                values = values * trained_scale[rows.to(device)].to(values.dtype)
            self._set_masks(token_mask.to(device), new_segments.to(device), train=False)
            values = values * self.mask().to(values.dtype)
        self.prompts = nn.Parameter(values.contiguous(), requires_grad=self.prompts.requires_grad)
        self.tokens = int(rows.numel())
        self.kept_tokens = kept  # on the CPU: only checkpoints read it
        self.prune_mode = mode
        self.masks_active = True

    def kept_values_mask(self) -> torch.Tensor:
        """(tokens, dim) bool: which prompt entries survive pruning."""
        return self.mask() != 0

    def kept_segment_rows(self) -> torch.Tensor:
        """(kept tokens, R) bool: the surviving segments of each kept token."""
        assert self.kept_tokens is not None
        rows = (
            self.segment_mask
            if self.prune_mode == "remove"
            else self.segment_mask[self.kept_tokens.to(self.segment_mask.device)]
        )
        return rows != 0

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
            "kept_segments": self.kept_segment_rows().to(torch.uint8),
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

    @contextmanager
    def leaving_out(self, token: int) -> Iterator[None]:
        """Run forwards without token ``token`` in any layer (as if pruned in ``remove``
        mode); importance by ablation measures the loss without each token this way."""
        if not 0 <= token < self.tokens:
            raise ValueError(f"token must lie in [0, {self.tokens}), got {token}")
        self._left_out = torch.tensor([i for i in range(self.tokens) if i != token])
        try:
            yield
        finally:
            self._left_out = None

    def forward(self, layer: int, batch_size: int) -> torch.Tensor:
        """Prompts for block ``layer`` as a (batch, tokens, dim) tensor."""
        prompts = self.prompts[layer]
        if self.proj is not None:
            prompts = self.proj(prompts)
        if self.masks_active:
            prompts = prompts * self.mask().to(prompts.dtype)
        if self._left_out is not None:
            prompts = prompts[self._left_out.to(prompts.device)]
        return self.dropout(prompts.unsqueeze(0).expand(batch_size, -1, -1))
