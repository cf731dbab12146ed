"""Masks to polygons and small-region cleanup, on synthetic masks whose right answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely

from sam_ls_backend.outputs import OUTPUTS, to_results
from sam_ls_backend.protocol.brush_rle import encode_rle
from sam_ls_backend.protocol.label_config import Control
from sam_ls_backend.protocol.polygons import (
    PolygonOptions,
    mask_to_polygons,
    polygon_answer,
    polygon_to_percent,
    remove_small_regions,
)
from tests.support.polygon_checks import check_answer, rasterize
from tests.support.polygon_readers import (
    READERS,
    coco_raster,
    disc,
    iou,
    shapely_polygon,
)

BRUSH = (OUTPUTS["brush"], Control("tag", "BrushLabels", ("Foreground", "Cat")))
POLYGON = (OUTPUTS["polygon"], Control("poly", "PolygonLabels", ("Foreground", "Cat")))


def test_a_rectangle_becomes_its_four_corners_on_the_pixel_edges_and_reads_back_exactly():
    mask = np.zeros((60, 80), dtype=bool)
    mask[10:30, 20:60] = True  # columns 20..59 cover x 20..60, rows 10..29 cover y 10..30
    (polygon,) = mask_to_polygons(mask, PolygonOptions(tolerance=1.0, max_vertices=50, min_area=1))
    assert sorted(map(tuple, polygon.tolist())) == [(20, 10), (20, 30), (60, 10), (60, 30)]
    np.testing.assert_array_equal(coco_raster([polygon], 60, 80), mask)


def test_each_part_above_the_minimum_area_is_one_polygon_largest_first():
    mask = disc((120, 200), 50, 60, 30) | disc((120, 200), 150, 60, 15)
    mask[5:8, 190:193] = True  # 9 pixels: under the minimum
    polygons = mask_to_polygons(mask, PolygonOptions(tolerance=0.5, max_vertices=200, min_area=50))
    assert len(polygons) == 2
    big, small = (rasterize(p, mask.shape) for p in polygons)
    assert iou(big, disc(mask.shape, 50, 60, 30)) > 0.97
    assert iou(small, disc(mask.shape, 150, 60, 15)) > 0.95


def test_a_part_with_holes_becomes_hole_free_pieces_tiling_it_and_a_small_hole_is_filled():
    mask = disc((200, 200), 100, 100, 80)
    big_hole = disc((200, 200), 100, 100, 30)
    other_hole = disc((200, 200), 60, 60, 8)
    small_hole = disc((200, 200), 100, 160, 2.5)
    mask &= ~big_hole & ~other_hole & ~small_hole
    options = PolygonOptions(tolerance=1.0, max_vertices=400, min_area=100)
    answer = polygon_answer(mask, options)
    assert len(answer.polygons) >= 3 and set(answer.parts) == {0}, "one part, several pieces"
    for name, read in READERS.items():
        filled = read(answer.polygons, 200, 200)
        assert filled[big_hole].mean() < 0.03 and filled[other_hole].mean() < 0.1, f"{name}: the holes stay empty"
        assert filled[small_hole].all(), f"{name}: the small hole is filled"
        assert iou(filled, mask | small_hole) > 0.98, name
    shapes = [shapely_polygon(p) for p in answer.polygons]
    assert all(shape.is_valid for shape in shapes)
    union = shapely.union_all(shapes)
    assert union.geom_type == "Polygon" and len(union.interiors) == 2, "the pieces tile the part, holes and all"
    assert sum(shape.area for shape in shapes) == pytest.approx(union.area), "pieces do not overlap"
    check_answer(mask, options)


def test_the_vertex_count_is_bounded_by_loosening_the_tolerance():
    ys, xs = np.mgrid[0:300, 0:300]
    wiggly = np.hypot(xs - 150, ys - 150) < 100 + 8 * np.sin(np.arctan2(ys - 150, xs - 150) * 40)
    loose = mask_to_polygons(wiggly, PolygonOptions(tolerance=0.5, max_vertices=1000, min_area=1))[0]
    assert len(loose) > 60, "the tight polygon needs many vertices: the bound below must bite"
    answer = polygon_answer(wiggly, PolygonOptions(tolerance=0.5, max_vertices=24, min_area=1))
    (bounded,) = answer.polygons
    assert 3 <= len(bounded) <= 24 and answer.tolerances[0] > 0.5
    assert iou(rasterize(bounded, wiggly.shape), wiggly) > 0.8
    assert shapely_polygon(bounded).is_valid


def test_holes_are_given_up_smallest_first_before_the_outline_is_loosened():
    mask = np.zeros((100, 100), dtype=bool)
    mask[10:90, 10:90] = True
    holes = {"small": (slice(20, 30), slice(20, 30)), "middle": (slice(60, 72), slice(20, 32)),
             "large": (slice(40, 55), slice(55, 75))}
    for rows, columns in holes.values():
        mask[rows, columns] = False
    options = PolygonOptions(tolerance=0.5, max_vertices=1000, min_area=50)
    roomy = polygon_answer(mask, options)
    np.testing.assert_array_equal(roomy.described, mask)
    np.testing.assert_array_equal(coco_raster(roomy.polygons, 100, 100), mask)
    needed = sum(len(p) for p in roomy.polygons)
    given_up = []
    for bound in range(needed - 1, 3, -1):
        answer = polygon_answer(mask, PolygonOptions(tolerance=0.5, max_vertices=bound, min_area=50))
        assert sum(len(p) for p in answer.polygons) <= bound
        filled = [name for name, where in holes.items() if answer.described[where].all()]
        assert all(not answer.described[where].any() for name, where in holes.items() if name not in filled)
        if filled != given_up:
            assert filled[:len(given_up)] == given_up, "a hole once given up stays given up"
            given_up = filled
        assert given_up == ["small", "middle", "large"][:len(given_up)], "smallest first"
        np.testing.assert_array_equal(coco_raster(answer.polygons, 100, 100), answer.described,
                                      err_msg="what is described is what a reader fills, square holes and all")
        if len(given_up) < 3:
            assert answer.tolerances == [0.5], "the outline is not loosened while a hole is left"
    assert given_up == ["small", "middle", "large"]
    (square,) = polygon_answer(mask, PolygonOptions(tolerance=0.5, max_vertices=4, min_area=50)).polygons
    assert len(square) == 4


def test_tolerance_trades_vertices_for_accuracy():
    mask = disc((200, 200), 100, 100, 70)
    fine = mask_to_polygons(mask, PolygonOptions(tolerance=0.5, max_vertices=1000, min_area=1))[0]
    coarse = mask_to_polygons(mask, PolygonOptions(tolerance=5.0, max_vertices=1000, min_area=1))[0]
    assert len(coarse) < len(fine)
    assert iou(rasterize(fine, mask.shape), mask) > iou(rasterize(coarse, mask.shape), mask)


def test_an_empty_mask_has_no_polygon():
    assert mask_to_polygons(np.zeros((10, 10), dtype=bool), PolygonOptions()) == []


def test_percent_coordinates_are_of_the_image_size_and_clipped():
    polygon = np.array([[0.5, 0.5], [199.5, 0.5], [199.5, 99.5], [-1.0, 120.0]])
    assert polygon_to_percent(polygon, 200, 100) == [[0.25, 0.5], [99.75, 0.5], [99.75, 99.5], [0.0, 100.0]]


def test_small_islands_are_removed_and_small_holes_filled_but_big_ones_and_border_background_kept():
    mask = np.zeros((50, 50), dtype=bool)
    mask[10:40, 10:40] = True
    mask[20:22, 20:22] = False  # hole of 4
    mask[25:35, 25:35] = False  # hole of 100
    mask[0:3, 45:48] = True  # island of 9
    mask[45:50, 0:5] = True  # island of 25 on the border
    cleaned = remove_small_regions(mask, 20)
    expected = mask.copy()
    expected[20:22, 20:22] = True
    expected[0:3, 45:48] = False
    np.testing.assert_array_equal(cleaned, expected)
    assert remove_small_regions(mask, 0) is mask, "0 is off"


def test_diagonal_pixels_are_one_island_and_diagonal_gaps_are_not_holes():
    mask = np.eye(6, dtype=bool)  # 6 pixels touching at corners: one 8-connected island
    np.testing.assert_array_equal(remove_small_regions(mask, 6), mask)
    assert remove_small_regions(mask, 7).sum() == 0


@pytest.mark.parametrize("controls, kinds", [
    ([BRUSH], ["brushlabels"]),
    ([POLYGON], ["polygonlabels", "polygonlabels"]),
    ([BRUSH, POLYGON], ["brushlabels", "polygonlabels", "polygonlabels"]),
])
def test_results_follow_the_controls_one_polygon_region_per_part(controls, kinds):
    mask = np.zeros((40, 80), dtype=bool)
    mask[5:30, 5:30] = True
    mask[10:20, 50:75] = True
    regions = to_results(mask, "Cat", controls, "image", 0.87, PolygonOptions(min_area=10))
    assert [r["type"] for r in regions] == kinds
    for region in regions:
        assert (region["original_width"], region["original_height"]) == (80, 40)
        assert region["to_name"] == "image" and region["score"] == 0.87
    for region in (r for r in regions if r["type"] == "brushlabels"):
        assert region["from_name"] == "tag" and region["value"]["brushlabels"] == ["Cat"]
        assert json.loads(region["value"]["rle"].data) == encode_rle(mask)  # JSON text the server writes as is
    polygons = [r for r in regions if r["type"] == "polygonlabels"]
    for region in polygons:
        assert region["from_name"] == "poly" and region["value"]["closed"] is True
        assert region["value"]["polygonlabels"] == ["Cat"]
        points = np.array(region["value"]["points"])
        assert ((points >= 0) & (points <= 100)).all()
    if polygons:
        np.testing.assert_allclose(np.array(polygons[0]["value"]["points"]).min(axis=0), [5 / 0.8, 5 / 0.4])
    assert len({r["id"] for r in regions}) == len(regions)
