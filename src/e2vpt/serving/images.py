"""An uploaded image → the model's input: its size checked from the header before a
pixel is decoded, anything the decoder cannot read answered 400."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from e2vpt.data.core import resize_image
from e2vpt.serving.errors import BadRequest, TooLarge


def decode_upload(blob: bytes, size: int, max_pixels: int) -> np.ndarray:
    """The image as RGB uint8 (size, size, 3), as ``e2vpt predict`` reads a file.

    :class:`TooLarge` where the header declares more than ``max_pixels`` pixels (a
    decompression bomb: a few KB that would decode to gigabytes), :class:`BadRequest`
    where it is no image the decoder reads."""
    try:
        image = Image.open(io.BytesIO(blob))
    except Image.DecompressionBombError:  # PIL's own, far larger limit: before ours
        raise _too_many_pixels(max_pixels) from None
    except UnidentifiedImageError:
        raise BadRequest(
            "not a readable image: no image format the server decodes (PNG, JPEG, WebP, …)"
        ) from None
    except Exception as err:  # noqa: BLE001 - whatever a hostile file makes PIL raise
        raise BadRequest(f"not a readable image: {_reason(err)}") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise _too_many_pixels(max_pixels, (width, height))
        try:
            return resize_image(image, size)
        except Exception as err:  # noqa: BLE001 - a truncated or corrupt pixel stream
            raise BadRequest(f"not a readable image: {_reason(err)}") from None


def _too_many_pixels(limit: int, size: tuple[int, int] | None = None) -> TooLarge:
    declared = f"{size[0]}×{size[1]} = {size[0] * size[1]}" if size else f"more than {limit}"
    return TooLarge(
        f"the image declares {declared} pixels; the limit is {limit} "
        "(`max_image_pixels`): send a smaller image"
    )


def _reason(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:200]
