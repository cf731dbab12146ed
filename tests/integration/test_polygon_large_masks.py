"""Polygons of picture-sized masks (4000×3000), read back by the outside readers: the slow end of the
polygon properties (tests/unit/test_polygon_properties.py has the generated masks)."""

from __future__ import annotations

import pytest

from sam_ls_backend.protocol.polygons import PolygonOptions
from tests.support.polygon_checks import check_answer
from tests.support.polygon_readers import blob_with_holes, blobs, speckled


@pytest.mark.parametrize("holes, max_vertices", [(50, 200), (500, 200), (500, 100_000)])
def test_a_4000_by_3000_mask_with_many_holes(holes, max_vertices):
    mask = blob_with_holes(3000, 4000, holes, seed=holes)
    check_answer(mask, PolygonOptions(max_vertices=max_vertices))


def test_a_4000_by_3000_speckled_mask_with_a_hundred_parts():
    mask = blobs(3000, 4000, parts=100, holes=400, seed=7) & speckled(3000, 4000, 0.85, seed=7)
    check_answer(mask, PolygonOptions())
