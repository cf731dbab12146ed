"""Task images as the arrays SAM takes: an upright H×W×3 uint8 RGB array from an encoded image's bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sam_ls_backend.errors import InvalidImage


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """H×W×3 uint8 RGB array of an encoded image; EXIF orientation applied.

    The size is read from the header and checked against `max_pixels` before any pixel is decoded, so a small
    file claiming huge dimensions costs nothing. Raises InvalidImage (422).
    """
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        # Pillow's own process-wide guard fired before we could read the size: far beyond any sane limit.
        raise InvalidImage("task image has more pixels than Pillow accepts "
                           f"(over twice Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS})") from None
    except UnidentifiedImageError:
        raise InvalidImage("task image is not in an image format the backend can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImage(f"task image could not be decoded: {exc}") from None
    with image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise InvalidImage(f"task image is empty ({width}×{height} pixels)")
        if width * height > max_pixels:
            raise InvalidImage(f"task image is {width}×{height} = {width * height / 1e6:.1f} megapixels, more than "
                               f"the limit of {max_pixels / 1e6:g} (IMAGE_MAX_MEGAPIXELS)")
        try:
            ImageOps.exif_transpose(image, in_place=True)
            return _rgb_array(image)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InvalidImage(f"task image is damaged or truncated: {exc}") from None


def _rgb_array(image: Image.Image) -> np.ndarray:
    """The pixels as a C-contiguous H×W×3 uint8 array, the way a browser shows them; alpha is dropped, not blended."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        gray = _eight_bit(np.asarray(image))
        return np.ascontiguousarray(np.repeat(gray[:, :, np.newaxis], 3, axis=2))
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def _eight_bit(values: np.ndarray) -> np.ndarray:
    """Grey levels in 0–255: 16-bit values keep their high byte (as browsers do); others are stretched min..max."""
    if values.dtype.kind in "ui" and values.min() >= 0 and values.max() <= 65535:
        return (values >> 8).astype(np.uint8)
    floats = np.nan_to_num(values.astype(np.float32))
    low, high = float(floats.min()), float(floats.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((floats - low) * (255.0 / (high - low))).astype(np.uint8)
