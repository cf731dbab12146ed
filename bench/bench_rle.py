"""Time `brush_rle.encode_rle` against the Label Studio SDK's `mask2rle` on picture-sized masks.

Run as `python -m bench.bench_rle`. Prints the machine, the versions, and per mask the number of runs, the
median milliseconds of each encoder over a few repeats in this same run, and their ratio. It also checks
that both encoders give the same bytes; then the time of the RLE's JSON text, json.dumps against `rle_json`.
"""

from __future__ import annotations

import json
import os
import platform
from functools import partial
from importlib.metadata import version

import numpy as np
from label_studio_sdk.converter.brush import mask2rle

from bench.machine import cpu_model
from bench.timing import median_ms
from sam_ls_backend.protocol.brush_rle import encode_rle, encode_rle_bytes, rle_json

SIZES = [(1024, 768), (4000, 3000)]  # width × height
SDK_REPEATS = 5
OUR_REPEATS = 21


def main() -> None:
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical cores")
    print(f"python {platform.python_version()}, numpy {np.__version__}, "
          f"label_studio_sdk {version('label-studio-sdk')}")
    print()
    print(f"{'mask':<20} {'runs':>8} {'mask2rle ms':>12} {'encode_rle ms':>14} {'ratio':>7}")
    for kind, make in (("ellipse", ellipse), ("blobs", blobs)):
        for width, height in SIZES:
            mask = make(height, width)
            sdk_input = mask.astype(np.uint8) * 255
            if encode_rle(mask) != mask2rle(sdk_input):
                raise SystemExit(f"encode_rle differs from mask2rle on {kind} {width}×{height}")
            sdk_ms = median_ms(partial(mask2rle, sdk_input), SDK_REPEATS)
            our_ms = median_ms(partial(encode_rle, mask), OUR_REPEATS)
            name = f"{kind} {width}×{height}"
            print(f"{name:<20} {count_runs(mask):>8} {sdk_ms:>12.1f} {our_ms:>14.2f} {sdk_ms / our_ms:>6.0f}×")
    print()
    print("the RLE's JSON text, as the server writes it:")
    print(f"{'mask':<20} {'bytes':>9} {'json.dumps ms':>14} {'rle_json ms':>12} {'ratio':>7}")
    for width, height in SIZES:
        rle = encode_rle_bytes(blobs(height, width))
        if rle_json(rle) != json.dumps(list(rle), separators=(",", ":")).encode():
            raise SystemExit(f"rle_json differs from json.dumps on blobs {width}×{height}")
        dumps_ms = median_ms(partial(json.dumps, list(rle), separators=(",", ":")), OUR_REPEATS)
        ours_ms = median_ms(partial(rle_json, rle), OUR_REPEATS)
        name = f"blobs {width}×{height}"
        print(f"{name:<20} {len(rle):>9} {dumps_ms:>14.1f} {ours_ms:>12.2f} {dumps_ms / ours_ms:>6.0f}×")


def ellipse(height: int, width: int) -> np.ndarray:
    """One centred filled ellipse: few runs, two per row."""
    yy, xx = np.ogrid[:height, :width]
    return ((yy - height / 2) / (0.4 * height)) ** 2 + ((xx - width / 2) / (0.4 * width)) ** 2 <= 1


def blobs(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Overlapping random discs, one per 20 000 pixels: many runs, like a busy segmentation."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(height * width // 20_000):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        r = int(rng.integers(2, min(height, width) // 25))
        y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, height), max(cx - r, 0), min(cx + r + 1, width)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        mask[y0:y1, x0:x1] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return mask


def count_runs(mask: np.ndarray) -> int:
    """Runs of equal pixels in row-major order, the unit both encoders work in."""
    flat = mask.ravel()
    return int(np.count_nonzero(flat[1:] != flat[:-1])) + 1


if __name__ == "__main__":
    main()
