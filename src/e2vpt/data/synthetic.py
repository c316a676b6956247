"""Built-in tasks that need no files: small procedurally drawn images in the spirit of
VTAB's structured group (dSprites / CLEVR): where a shape is, how a bar is turned,
how many objects there are. Deterministic from a seed."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

CANVAS = 32
SPLIT_SIZES = {"train": 800, "val": 200, "test": 1000}
_SPLIT_OFFSET = {"train": 0, "val": 1, "test": 2}


def _background(rng: np.random.Generator) -> tuple[Image.Image, tuple[int, int, int]]:
    """A random flat colour with mild noise, and a colour that stands out from it:
    the objects, not the canvas, carry the label."""
    colour = rng.integers(0, 256, size=3)
    img = colour[None, None, :] + rng.normal(0, 6, size=(CANVAS, CANVAS, 3))
    contrast = (colour + 128 + rng.integers(-40, 41, size=3)) % 256
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return canvas, (int(contrast[0]), int(contrast[1]), int(contrast[2]))


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    kind: int,
    cx: float,
    cy: float,
    r: float,
    colour: tuple[int, int, int],
) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == 0:
        draw.rectangle(box, fill=colour)
    elif kind == 1:
        draw.ellipse(box, fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)


def _position(rng: np.random.Generator) -> tuple[Image.Image, int]:
    """9 classes: the 3×3 grid cell that holds the shape's centre."""
    label = int(rng.integers(0, 9))
    row, col = divmod(label, 3)
    cell = CANVAS / 3
    r = float(rng.uniform(3.0, 5.0))
    cx = col * cell + rng.uniform(r * 0.5, cell - r * 0.5)
    cy = row * cell + rng.uniform(r * 0.5, cell - r * 0.5)
    img, colour = _background(rng)
    _draw_shape(ImageDraw.Draw(img), int(rng.integers(0, 3)), cx, cy, r, colour)
    return img, label


def _orientation(rng: np.random.Generator) -> tuple[Image.Image, int]:
    """8 classes: the angle of a bar, in 22.5° bins over 180°."""
    label = int(rng.integers(0, 8))
    angle = math.radians(label * 22.5 + rng.uniform(-5, 5))
    length = rng.uniform(9, 13)
    cx, cy = rng.uniform(11, 21, size=2)
    dx, dy = math.cos(angle) * length, -math.sin(angle) * length
    img, colour = _background(rng)
    ImageDraw.Draw(img).line(
        [(cx - dx, cy - dy), (cx + dx, cy + dy)],
        fill=colour,
        width=int(rng.integers(2, 4)),
    )
    return img, label


def _count(rng: np.random.Generator) -> tuple[Image.Image, int]:
    """6 classes: 1–6 small shapes that do not overlap."""
    label = int(rng.integers(0, 6))
    img, colour = _background(rng)
    draw = ImageDraw.Draw(img)
    centres: list[tuple[float, float]] = []
    while len(centres) < label + 1:
        c = (float(rng.uniform(4, 28)), float(rng.uniform(4, 28)))
        if all((c[0] - o[0]) ** 2 + (c[1] - o[1]) ** 2 > 49 for o in centres):
            centres.append(c)
    for cx, cy in centres:
        _draw_shape(draw, int(rng.integers(0, 3)), cx, cy, 2.5, colour)
    return img, label


GENERATORS: dict[
    str, tuple[Callable[[np.random.Generator], tuple[Image.Image, int]], list[str]]
] = {
    "position": (_position, [f"cell_{r}{c}" for r in range(3) for c in range(3)]),
    "orientation": (_orientation, [f"angle_{int(i * 22.5)}" for i in range(8)]),
    "count": (_count, [f"count_{i + 1}" for i in range(6)]),
}


def generate_split(
    task: str, split: str, seed: int = 0, size: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 N×32×32×3, labels int64 N, class names) for one split."""
    generator, classes = GENERATORS[task]
    n = SPLIT_SIZES[split] if size is None else size
    rng = np.random.default_rng([seed, _SPLIT_OFFSET[split], sorted(GENERATORS).index(task)])
    images = np.empty((n, CANVAS, CANVAS, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        img, labels[i] = generator(rng)
        images[i] = np.asarray(img, dtype=np.uint8)
    return images, labels, classes
