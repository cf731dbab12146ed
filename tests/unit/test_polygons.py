"""Masks to polygons and small-region cleanup, on synthetic masks whose right answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sam_ls_backend.outputs import OUTPUTS, to_results
from sam_ls_backend.protocol.brush_rle import encode_rle
from sam_ls_backend.protocol.label_config import Control
from sam_ls_backend.protocol.polygons import PolygonOptions, mask_to_polygons, polygon_to_percent, remove_small_regions

BRUSH = (OUTPUTS["brush"], Control("tag", "BrushLabels", ("Foreground",)))
POLYGON = (OUTPUTS["polygon"], Control("poly", "PolygonLabels", ("Foreground",)))


def rasterize(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centres lie inside `polygon` (even-odd rule), as COCO tools fill a ring."""
    height, width = shape
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    inside = np.zeros(shape, dtype=bool)
    x0, y0 = polygon[:, 0], polygon[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for ax, ay, bx, by in zip(x0, y0, x1, y1):
        if ay == by:
            continue
        crosses = (ys >= min(ay, by)) & (ys < max(ay, by))
        x_at = ax + (ys - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (xs < x_at)
    return inside


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def disc(shape: tuple[int, int], cx: float, cy: float, r: float) -> np.ndarray:
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r


def test_a_rectangle_becomes_four_vertices_within_half_a_pixel_of_its_edges():
    mask = np.zeros((60, 80), dtype=bool)
    mask[10:30, 20:60] = True  # columns 20..59 cover x 20..60, rows 10..29 cover y 10..30
    (polygon,) = mask_to_polygons(mask, PolygonOptions(tolerance=1.0, max_vertices=50, min_area=1))
    assert len(polygon) == 4
    np.testing.assert_allclose(polygon.min(axis=0), [20.5, 10.5])
    np.testing.assert_allclose(polygon.max(axis=0), [59.5, 29.5])


def test_each_part_above_the_minimum_area_is_one_polygon_largest_first():
    mask = disc((120, 200), 50, 60, 30) | disc((120, 200), 150, 60, 15)
    mask[5:8, 190:193] = True  # 9 pixels: under the minimum
    polygons = mask_to_polygons(mask, PolygonOptions(tolerance=0.5, max_vertices=200, min_area=50))
    assert len(polygons) == 2
    big, small = (rasterize(p, mask.shape) for p in polygons)
    assert iou(big, disc(mask.shape, 50, 60, 30)) > 0.95
    assert iou(small, disc(mask.shape, 150, 60, 15)) > 0.9


def test_a_large_hole_is_cut_in_through_a_keyhole_and_a_small_one_is_filled():
    mask = disc((200, 200), 100, 100, 80)
    big_hole = disc((200, 200), 100, 100, 30)
    small_hole = disc((200, 200), 100, 160, 2.5)
    mask &= ~big_hole & ~small_hole
    (polygon,) = mask_to_polygons(mask, PolygonOptions(tolerance=0.5, max_vertices=400, min_area=100))
    filled = rasterize(polygon, mask.shape)
    assert not filled[big_hole].any() or filled[big_hole].mean() < 0.05, "the big hole stays empty"
    assert filled[small_hole].all(), "the small hole is filled"
    assert iou(filled, mask | small_hole) > 0.97


def test_the_vertex_count_is_bounded_by_loosening_the_tolerance():
    ys, xs = np.mgrid[0:300, 0:300]
    wiggly = np.hypot(xs - 150, ys - 150) < 100 + 8 * np.sin(np.arctan2(ys - 150, xs - 150) * 40)
    loose = mask_to_polygons(wiggly, PolygonOptions(tolerance=0.5, max_vertices=1000, min_area=1))[0]
    assert len(loose) > 60, "the tight polygon needs many vertices: the bound below must bite"
    (bounded,) = mask_to_polygons(wiggly, PolygonOptions(tolerance=0.5, max_vertices=24, min_area=1))
    assert 3 <= len(bounded) <= 24
    assert iou(rasterize(bounded, wiggly.shape), wiggly) > 0.8


def test_holes_are_filled_when_the_vertex_bound_leaves_no_room_for_them():
    mask = np.zeros((100, 100), dtype=bool)
    mask[10:90, 10:90] = True
    for corner in (20, 60):
        mask[corner:corner + 15, corner:corner + 15] = False
    # Each hole is traced by the pixels around it, corners cut: 8 vertices, plus 2 for its slit.
    (roomy,) = mask_to_polygons(mask, PolygonOptions(tolerance=0.5, max_vertices=30, min_area=50))
    assert len(roomy) == 4 + 2 * (8 + 2)
    # Loosened (up to 4× the tolerance) first: the holes become squares of 4.
    (looser,) = mask_to_polygons(mask, PolygonOptions(tolerance=0.5, max_vertices=20, min_area=50))
    assert len(looser) == 4 + 2 * (4 + 2)
    (one_hole,) = mask_to_polygons(mask, PolygonOptions(tolerance=0.5, max_vertices=10, min_area=50))
    assert len(one_hole) == 4 + 4 + 2
    (no_hole,) = mask_to_polygons(mask, PolygonOptions(tolerance=0.5, max_vertices=8, min_area=50))
    assert len(no_hole) == 4
    assert rasterize(no_hole, mask.shape)[25:30, 25:30].all()


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
        assert json.loads(region["value"]["rle"].text) == encode_rle(mask)  # JSON text the server writes as is
    polygons = [r for r in regions if r["type"] == "polygonlabels"]
    for region in polygons:
        assert region["from_name"] == "poly" and region["value"]["closed"] is True
        assert region["value"]["polygonlabels"] == ["Cat"]
        points = np.array(region["value"]["points"])
        assert ((points >= 0) & (points <= 100)).all()
    if polygons:
        np.testing.assert_allclose(np.array(polygons[0]["value"]["points"]).min(axis=0), [5.5 / 0.8, 5.5 / 0.4])
    assert len({r["id"] for r in regions}) == len(regions)


BOTH_CONFIG = ('<View><Image name="image" value="$image"/>'
               '<BrushLabels name="tag" toName="image"><Label value="Foreground"/></BrushLabels>'
               '<PolygonLabels name="poly" toName="image"><Label value="Foreground"/></PolygonLabels>'
               '<KeyPointLabels name="tag2" toName="image" smart="true"><Label value="Foreground"/></KeyPointLabels>'
               '</View>')


@pytest.fixture(scope="module")
def polygon_image(image_host) -> str:
    from tests.support.scenes import scene

    return image_host.add_image("/data/upload/5/polygons.png", scene(320, 240, seed=33))


def predict(client, url: str, config: str | None = None) -> tuple[int, dict]:
    from tests.support.ls_bodies import keypoint, predict_body

    body = predict_body(url, [keypoint(40, 50), keypoint(70, 30, False)])
    if config is not None:
        body["label_config"] = config
    response = client.post("/predict", json=body)
    return response.status_code, response.json


@pytest.mark.parametrize("result_type, types", [
    ("auto", {"brushlabels", "polygonlabels"}),
    ("both", {"brushlabels", "polygonlabels"}),
    ("brush", {"brushlabels"}),
    ("polygon", {"polygonlabels"}),
])
def test_the_config_decides_which_controls_answer_and_result_type_can_force_one(
        make_client, polygon_image, result_type, types):
    from tests.support.reference import decode_brush_region

    client, _ = make_client(RESULT_TYPE=result_type)
    status, body = predict(client, polygon_image, BOTH_CONFIG)
    assert status == 200, body
    regions = body["results"][0]["result"]
    assert {r["type"] for r in regions} == types
    if types == {"brushlabels", "polygonlabels"}:
        (brush,) = [r for r in regions if r["type"] == "brushlabels"]
        mask = remove_small_regions(decode_brush_region(brush), 64)
        painted = np.zeros_like(mask)
        for region in regions[1:]:
            painted |= rasterize(np.array(region["value"]["points"]) * np.array([3.2, 2.4]), mask.shape)
        assert iou(painted, mask) > 0.8, "the polygons outline the brush mask"


def test_a_forced_control_the_config_lacks_is_a_client_error(make_client, polygon_image):
    client, _ = make_client(RESULT_TYPE="polygon")
    status, body = predict(client, polygon_image)  # the captured config has only BrushLabels
    assert status == 400 and 'no <PolygonLabels toName="image">' in body["error"]
    assert "RESULT_TYPE=polygon" in body["error"]
