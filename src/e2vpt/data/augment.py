"""Batched augmentations on uint8 image tensors (cheap enough to run in the train loop)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    x = x.clone()
    x[flip] = x[flip].flip(-1)
    return x


def crop_flip(
    x: torch.Tensor, generator: torch.Generator, pad_fraction: float = 0.125
) -> torch.Tensor:
    """Random crop after reflect padding by ``pad_fraction`` of the side, then flip."""
    n, _, h, w = x.shape
    pad = max(1, int(round(h * pad_fraction)))
    padded = F.pad(x.float(), (pad, pad, pad, pad), mode="reflect").to(x.dtype)
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    crops = torch.stack([padded[i, :, oy[i] : oy[i] + h, ox[i] : ox[i] + w] for i in range(n)])
    return hflip(crops, generator)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, size: int) -> torch.Tensor:
    """A random size×size crop of images stored larger (FGVC: 256 → 224), then flip."""
    n, _, h, w = x.shape
    if h < size or w < size:
        raise ValueError(f"random-crop-flip needs images of at least {size} px, got {h}×{w}")
    oy = torch.randint(0, h - size + 1, (n,), generator=generator)
    ox = torch.randint(0, w - size + 1, (n,), generator=generator)
    crops = torch.stack([x[i, :, oy[i] : oy[i] + size, ox[i] : ox[i] + size] for i in range(n)])
    return hflip(crops, generator)


AUGMENTATIONS = ("none", "flip", "crop-flip", "random-crop-flip")


def apply_augment(
    name: str, x: torch.Tensor, generator: torch.Generator, size: int | None = None
) -> torch.Tensor:
    if name == "none":
        return x
    if name == "flip":
        return hflip(x, generator)
    if name == "crop-flip":
        return crop_flip(x, generator)
    if name == "random-crop-flip":
        return random_crop_flip(x, generator, size if size is not None else x.shape[-1])
    raise ValueError(f"unknown augmentation {name!r}; use one of {', '.join(AUGMENTATIONS)}")
