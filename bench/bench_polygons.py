"""Time `polygons.mask_to_polygons` on a 4000×3000 mask with 1, 50 and 500 holes, beside the brush answer.

Run as `python -m bench.bench_polygons`. Prints the machine, the versions, and per mask: the median
milliseconds of the polygon conversion (default options: at most 200 vertices per part, so most holes are
given up, and with room for every hole) and of `brush_rle.encode_rle_bytes` on the same mask in this same run,
the polygons and vertices sent, the holes kept, and the IoU of what pycocotools and OpenCV fill from the
polygons with the mask after small-region cleanup (and with what the polygons describe, given-up holes filled).
"""

from __future__ import annotations

import os
import platform
from functools import partial
from importlib.metadata import version

import cv2
import numpy as np

from bench.machine import cpu_model
from bench.timing import median_ms
from sam_ls_backend.protocol.brush_rle import encode_rle_bytes
from sam_ls_backend.protocol.polygons import PolygonOptions, polygon_answer, remove_small_regions
from tests.support.polygon_readers import blob_with_holes, coco_raster, iou, opencv_raster

WIDTH, HEIGHT = 4000, 3000
HOLES = (1, 50, 500)
REPEATS = 5


def main() -> None:
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical cores")
    print(f"python {platform.python_version()}, numpy {np.__version__}, opencv {cv2.__version__}, "
          f"pycocotools {version('pycocotools')}")
    print(f"mask {WIDTH}×{HEIGHT}: an ellipse with round holes; IoU with the cleaned mask / with what is described")
    print()
    print(f"{'holes':>5} {'max_vertices':>12} {'polygon ms':>11} {'brush ms':>9} {'polygons':>8} {'vertices':>8} "
          f"{'holes kept':>10} {'IoU coco':>15} {'IoU opencv':>15}")
    for holes in HOLES:
        mask = blob_with_holes(HEIGHT, WIDTH, holes, seed=holes)
        brush_ms = median_ms(partial(encode_rle_bytes, mask), REPEATS)
        for max_vertices in (200, 100_000):
            options = PolygonOptions(max_vertices=max_vertices)
            polygon_ms = median_ms(partial(polygon_answer, mask, options), REPEATS)
            answer = polygon_answer(mask, options)
            clean = remove_small_regions(mask, options.min_area)
            holes_in = count_holes(clean)
            kept = count_holes(answer.described)
            scores = []
            for read in (coco_raster, opencv_raster):
                filled = read(answer.polygons, HEIGHT, WIDTH)
                scores.append(f"{iou(filled, clean):.4f}/{iou(filled, answer.described):.4f}")
            print(f"{holes:>5} {max_vertices:>12} {polygon_ms:>11.0f} {brush_ms:>9.1f} {len(answer.polygons):>8} "
                  f"{sum(len(p) for p in answer.polygons):>8} {kept:>4} of {holes_in:<3} {scores[0]:>15} "
                  f"{scores[1]:>15}")


def count_holes(mask: np.ndarray) -> int:
    padded = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    return cv2.connectedComponents(padded, connectivity=4)[0] - 2  # less label 0 and the outside


if __name__ == "__main__":
    main()
