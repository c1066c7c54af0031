"""Mask encodings: RLE, polygons, boxes, components, label images."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from engine.io.masks import (
    check_rle,
    label_image_to_masks,
    mask_to_bbox,
    mask_to_polygons,
    mask_to_rle,
    masks_to_label_image,
    polygons_to_mask,
    rle_to_mask,
    split_components,
)

H, W = 48, 64


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _disk(cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _rect(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


SHAPES = {
    "disk": _disk(20, 30, 12),
    "rect": _rect(5, 15, 3, 40),
    "two_parts": _rect(2, 10, 2, 12) | _disk(35, 45, 8),
    "touching_border": _rect(0, 10, 50, 64),
    "l_shape": _rect(10, 40, 10, 16) | _rect(34, 40, 10, 40),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_rle_round_trip(name: str) -> None:
    m = SHAPES[name]
    rle = mask_to_rle(m)
    assert rle["size"] == [H, W]
    assert isinstance(rle["counts"], str)
    np.testing.assert_array_equal(rle_to_mask(rle), m)
    np.testing.assert_array_equal(rle_to_mask({**rle, "counts": rle["counts"].encode()}), m)


def test_rle_matches_pycocotools_area() -> None:
    m = SHAPES["two_parts"]
    rle = mask_to_rle(m)
    assert int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()})) == m.sum()


def test_uncompressed_rle() -> None:
    # 3x2 image (h=3, w=2), column-major: col0 = [0,1,1], col1 = [1,0,0]
    rle = {"size": [3, 2], "counts": [1, 3, 2]}
    expected = np.array([[0, 1], [1, 0], [1, 0]], bool)
    np.testing.assert_array_equal(rle_to_mask(rle), expected)


def test_rle_size_from_arguments_and_mismatch() -> None:
    rle = mask_to_rle(SHAPES["rect"])
    np.testing.assert_array_equal(rle_to_mask({"counts": rle["counts"]}, H, W), SHAPES["rect"])
    with pytest.raises(ValueError, match="does not match"):
        rle_to_mask(rle, H + 1, W)


@pytest.mark.parametrize(
    "bad",
    [
        {"size": [3, 2], "counts": [1, 3, 3]},  # wrong total
        {"size": [3, 2], "counts": [1, -3, 8]},  # negative run
        {"size": [4, 4], "counts": "0?~"},  # '~' is outside the alphabet
        {"size": [40, 40], "counts": "a"},  # ends mid-number
        {"counts": "PPY"},  # no size
    ],
)
def test_malformed_rle_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        check_rle(bad)
    with pytest.raises(ValueError):
        rle_to_mask(bad)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_polygon_round_trip_iou(name: str) -> None:
    m = SHAPES[name]
    polys = mask_to_polygons(m)
    assert all(len(p) >= 6 and len(p) % 2 == 0 for p in polys)
    back = polygons_to_mask(polys, H, W)
    assert _iou(back, m) > 0.8
    assert all(min(p[0::2]) >= 0 and max(p[0::2]) <= W for p in polys)
    assert all(min(p[1::2]) >= 0 and max(p[1::2]) <= H for p in polys)


def test_polygons_keep_every_part() -> None:
    m = SHAPES["two_parts"]
    polys = mask_to_polygons(m)
    assert len(polys) == 2
    for part in split_components(m):
        back = polygons_to_mask(polys, H, W)
        assert (back & part).sum() / part.sum() > 0.8


def test_single_pixels_become_squares() -> None:
    m = np.zeros((H, W), bool)
    m[3, 4] = True
    m[30, 50] = True
    polys = mask_to_polygons(m)
    assert len(polys) == 2
    assert [4.0, 3.0, 5.0, 3.0, 5.0, 4.0, 4.0, 4.0] in polys
    np.testing.assert_array_equal(polygons_to_mask(polys, H, W), m)


def test_thin_line_and_diagonal_survive() -> None:
    line = np.zeros((H, W), bool)
    line[20, 5:40] = True
    diag = np.zeros((H, W), bool)
    np.fill_diagonal(diag[5:25, 5:25], True)
    for m in (line, diag):
        assert _iou(polygons_to_mask(mask_to_polygons(m), H, W), m) > 0.8


def test_polygon_tolerance_reduces_points() -> None:
    m = SHAPES["disk"]
    exact = mask_to_polygons(m)
    simple = mask_to_polygons(m, tolerance=1.0)
    assert len(simple[0]) < len(exact[0])
    assert _iou(polygons_to_mask(simple, H, W), m) > 0.9


def test_empty_mask_polygons_and_bbox() -> None:
    empty = np.zeros((H, W), bool)
    assert mask_to_polygons(empty) == []
    assert mask_to_bbox(empty) == [0.0, 0.0, 0.0, 0.0]
    assert not polygons_to_mask([], H, W).any()


def test_polygons_to_mask_rejects_short_polygon() -> None:
    with pytest.raises(ValueError, match="at least 6"):
        polygons_to_mask([[0, 0, 5, 5]], H, W)


def test_bbox_is_xywh() -> None:
    m = _rect(5, 15, 3, 40)  # rows 5..14, cols 3..39
    assert mask_to_bbox(m) == [3.0, 5.0, 37.0, 10.0]
    one = np.zeros((H, W), bool)
    one[7, 9] = True
    assert mask_to_bbox(one) == [9.0, 7.0, 1.0, 1.0]


def test_split_components_sorted_and_connectivity() -> None:
    m = _rect(0, 2, 0, 2) | _rect(10, 20, 10, 20)
    m[2, 2] = True  # touches the small square diagonally only
    parts8 = split_components(m)
    assert [int(p.sum()) for p in parts8] == [100, 5]
    parts4 = split_components(m, connectivity=1)
    assert [int(p.sum()) for p in parts4] == [100, 4, 1]
    assert [int(p.sum()) for p in split_components(m, min_area=5)] == [100, 5]


def test_label_image_higher_score_on_top() -> None:
    a = _rect(0, 20, 0, 20)
    b = _rect(10, 30, 10, 30)
    labels = masks_to_label_image([a, b], scores=[0.9, 0.1])
    assert labels.dtype == np.uint16
    assert labels[15, 15] == 1  # a has the higher score
    assert labels[25, 25] == 2 and labels[5, 5] == 1 and labels[40, 40] == 0
    labels = masks_to_label_image([a, b], scores=[0.1, 0.9])
    assert labels[15, 15] == 2
    labels = masks_to_label_image([a, b])  # no scores: given order, later on top
    assert labels[15, 15] == 2


def test_label_image_round_trip_and_dtype() -> None:
    masks = [SHAPES["rect"], SHAPES["disk"] & ~SHAPES["rect"]]
    labels = masks_to_label_image(masks)
    back = label_image_to_masks(labels)
    assert len(back) == 2
    for m, b in zip(masks, back):
        np.testing.assert_array_equal(m, b)
    assert masks_to_label_image([], shape=(4, 5)).shape == (4, 5)
    with pytest.raises(ValueError):
        masks_to_label_image([])


def test_label_image_uses_uint32_past_65535() -> None:
    n = 65536
    masks = [np.zeros((1, 1), bool)] * n
    labels = masks_to_label_image(masks)
    assert labels.dtype == np.uint32


def test_label_image_painted_from_crops_equals_full_painting() -> None:
    from engine.structures import InstanceMask

    rng = np.random.default_rng(4)
    masks = []
    for _ in range(6):
        m = np.zeros((40, 50), bool)
        y, x = rng.integers(0, 30), rng.integers(0, 40)
        m[y: y + 10, x: x + 10] = rng.random((10, 10)) > 0.3
        masks.append(m)
    insts = [InstanceMask(m, 1.0) for m in masks]
    scores = rng.random(6).tolist()
    full = masks_to_label_image(masks, scores)
    painted = masks_to_label_image([i.crop for i in insts], scores, shape=(40, 50), boxes=[i.box for i in insts])
    assert np.array_equal(painted, full)
    with pytest.raises(ValueError, match="shape"):
        masks_to_label_image([i.crop for i in insts], scores, boxes=[i.box for i in insts])
