"""Batched augmentations on uint8 image tensors (cheap enough to run in the train loop)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from e2vpt.data.formats import AUGMENTATIONS


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


def random_crops_flip(
    images: Sequence[torch.Tensor], generator: torch.Generator, size: int
) -> torch.Tensor:
    """A random size×size crop of each of differently sized 3×h×w images (FGVC: the
    aspect-kept Resize 256 → RandomCrop 224 anywhere in it), then flip; N×3×size×size.

    Offsets are uniform over the whole image (0 … h − size, 0 … w − size). The generator
    is consumed the same whatever the sizes: N×2 uniforms (image i's row then column, in
    order), then the N flips, so ranks holding the same batch draw the same crops."""
    n = len(images)
    if n == 0:
        raise ValueError("random-crop-flip needs at least one image")
    for img in images:
        h, w = img.shape[-2:]
        if h < size or w < size:
            raise ValueError(f"random-crop-flip needs images of at least {size} px, got {h}×{w}")
    spans = torch.tensor([img.shape[-2:] for img in images], dtype=torch.int64) - size + 1
    u = torch.rand((n, 2), generator=generator, dtype=torch.float64)
    offsets = torch.minimum((u * spans).long(), spans - 1).tolist()
    windows = zip(images, offsets, strict=True)
    crops = torch.stack([img[:, oy : oy + size, ox : ox + size] for img, (oy, ox) in windows])
    return hflip(crops, generator)


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


def augment_batch(
    name: str,
    split_images: torch.Tensor,
    crops: Sequence[torch.Tensor] | None,
    idx: torch.Tensor | Sequence[int],
    generator: torch.Generator,
    size: int,
) -> torch.Tensor:
    """The training batch ``idx`` augmented by ``name``: random-crop-flip with a split's
    aspect-kept ``crops`` (FGVC) cuts them on the CPU (the result is on the CPU); every
    other case is ``apply_augment`` on ``split_images[idx]`` (on their device)."""
    if name == "random-crop-flip" and crops is not None:
        rows = idx.tolist() if isinstance(idx, torch.Tensor) else list(idx)
        return random_crops_flip([crops[i] for i in rows], generator, size)
    return apply_augment(name, split_images[idx], generator, size)
