"""Masks held as crops + boxes: round trips, exports and IoU equal to the full-size path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from engine.io.coco import build_coco_dataset, build_results, write_label_images
from engine.io.masks import (
    _string_to_counts,
    check_rle,
    crop_to_rle,
    label_image_to_crops,
    mask_to_polygons,
    masks_to_label_image,
    polygons_to_mask,
)
from engine.ops.masks import crop_cell_means, crop_iou_matrix
from engine.ops.nms import mask_iou_matrix
from engine.structures import ImageResult, InstanceMask, paste, tight_crop


def _random_masks(seed: int, shape=(37, 53), n: int = 8) -> list[np.ndarray]:
    """Blobs of random size and fill anywhere in the image, some touching its borders, one empty."""
    rng = np.random.default_rng(seed)
    H, W = shape
    out = [np.zeros(shape, bool)]
    for _ in range(n):
        m = np.zeros(shape, bool)
        y0, x0 = rng.integers(0, H), rng.integers(0, W)
        y1, x1 = rng.integers(y0 + 1, H + 1), rng.integers(x0 + 1, W + 1)
        m[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) > rng.uniform(0.1, 0.8)
        out.append(m)
    border = np.zeros(shape, bool)
    border[:, 0] = border[-1, :] = border[0, -5:] = True  # left side, bottom, top-right corner
    out.append(border)
    out.append(np.ones(shape, bool))
    return out


def _old_rle(mask: np.ndarray) -> dict:
    """The full-size encoding the crop path replaces: pycocotools on the whole image."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(mask.shape), "counts": rle["counts"].decode("ascii")}


@pytest.mark.parametrize("seed", range(5))
def test_full_to_crop_to_full_is_the_same_mask(seed):
    for m in _random_masks(seed):
        inst = InstanceMask(m, 1.0)
        assert inst.shape == m.shape and inst.area == int(m.sum())
        assert np.array_equal(inst.mask, m) and np.array_equal(paste(inst.crop, inst.box, m.shape), m)
        if m.any():
            rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            assert inst.box == (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1)
            assert inst.crop.shape == (rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0])
        # a crop with slack around it, given with its box, is tightened to the same instance
        y0, y1, x0, x1 = inst.box
        ly0, lx0 = max(0, y0 - 2), max(0, x0 - 3)
        loose = InstanceMask(m[ly0:y1, lx0:x1], 1.0, box=(ly0, y1, lx0, x1), shape=m.shape)
        assert loose.box == inst.box and np.array_equal(loose.crop, inst.crop)


def test_empty_mask_is_an_empty_crop():
    inst = InstanceMask(np.zeros((6, 9), bool), 0.5)
    assert inst.area == 0 and inst.crop.shape == (0, 0) and inst.shape == (6, 9)
    assert not inst.mask.any() and inst.mask.shape == (6, 9)
    assert np.isnan(inst.centre()[0])
    assert build_coco_dataset([ImageResult("a.png", 6, 9, [inst])])["annotations"] == []


def test_a_tight_crop_owns_its_memory():
    """A crop cut from a big mask must not keep the big array alive."""
    big = np.zeros((400, 300), bool)
    big[10:12, 20:25] = True
    crop, box = tight_crop(big, (0, 400, 0, 300))
    assert box == (10, 12, 20, 25) and crop.base is None and crop.nbytes == 10


def test_crops_that_do_not_fit_their_box_are_refused():
    with pytest.raises(ValueError, match="does not fit"):
        InstanceMask(np.ones((3, 3), bool), 1.0, box=(0, 3, 0, 4), shape=(10, 10))
    with pytest.raises(ValueError, match="does not fit"):
        InstanceMask(np.ones((3, 3), bool), 1.0, box=(8, 11, 0, 3), shape=(10, 10))
    with pytest.raises(ValueError, match="shape"):
        InstanceMask(np.ones((3, 3), bool), 1.0, box=(0, 3, 0, 3))
    with pytest.raises(ValueError, match="does not fit"):
        crop_to_rle(np.ones((3, 3), bool), (0, 3, 0, 4), (10, 10))


@pytest.mark.parametrize("seed", range(6))
def test_rle_from_crops_equals_the_full_mask_encoding(seed):
    for shape in ((37, 53), (1, 7), (9, 1)):
        for m in _random_masks(seed, shape):
            inst = InstanceMask(m, 1.0)
            rle = crop_to_rle(inst.crop, inst.box, inst.shape)
            assert rle == _old_rle(m)
            decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
            assert np.array_equal(decoded.astype(bool), m)


@pytest.mark.parametrize("band_px", [1, 7, 40])
def test_rle_encoded_a_few_columns_at_a_time_is_the_same(monkeypatch, band_px):
    """crop_to_rle pads RLE_BAND_PX pixels of columns at a time (an image-sized mask would otherwise be
    copied twice): bands of one column, a few, and runs going on across a band's edge."""
    import engine.io.masks as masks

    monkeypatch.setattr(masks, "RLE_BAND_PX", band_px)
    full = np.zeros((6, 9), bool)
    full[2:, 3] = full[:, 4] = full[:3, 5] = True  # one run over three columns, across band edges
    for m in [full, np.ones((6, 9), bool)] + _random_masks(3, (23, 31)):
        inst = InstanceMask(m, 1.0)
        assert crop_to_rle(inst.crop, inst.box, inst.shape) == _old_rle(m)


def test_runs_across_columns_are_joined():
    """A mask filling the bottom of one column and the top of the next is one COCO run."""
    m = np.zeros((5, 3), bool)
    m[3:, 0] = m[:2, 1] = True
    inst = InstanceMask(m, 1.0)
    rle = crop_to_rle(inst.crop, inst.box, inst.shape)
    assert rle == _old_rle(m) and check_rle(rle) == (5, 3)
    assert _string_to_counts(rle["counts"]) == [3, 4, 8]


@pytest.mark.parametrize("segmentation", ["rle", "polygon"])
def test_coco_export_equals_the_full_mask_path(segmentation):
    masks = _random_masks(11, (41, 47))
    res = ImageResult("a.png", 41, 47, [InstanceMask(m, 0.5 + k / 100) for k, m in enumerate(masks)])
    anns = build_coco_dataset([res], segmentation=segmentation)["annotations"]
    full = [m for m in masks if m.any()]
    assert len(anns) == len(full)
    for ann, m in zip(anns, full):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        assert ann["area"] == int(m.sum())
        assert ann["bbox"] == [cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]]
        seg = ann["segmentation"]
        if isinstance(seg, dict):
            assert seg == _old_rle(m)
        else:
            assert seg == mask_to_polygons(m)
            assert np.array_equal(polygons_to_mask(seg, 41, 47), polygons_to_mask(mask_to_polygons(m), 41, 47))
    results = build_results([res], {"a.png": 1})
    assert [r["segmentation"] for r in results] == [_old_rle(m) for m in full]


def test_label_images_painted_from_crops_equal_full_painting(tmp_path):
    from PIL import Image

    masks = _random_masks(3, (30, 40))
    scores = np.random.default_rng(0).random(len(masks)).tolist()
    res = ImageResult("a.png", 30, 40, [InstanceMask(m, s) for m, s in zip(masks, scores)])
    (path,) = write_label_images([res], tmp_path)
    assert np.array_equal(np.asarray(Image.open(path)), masks_to_label_image(masks, scores))
    back = label_image_to_crops(np.asarray(Image.open(path)))
    painted = masks_to_label_image(masks, scores)
    for value, crop, box in back:
        assert np.array_equal(paste(crop, box, (30, 40)), painted == value)


@pytest.mark.parametrize("seed", range(4))
def test_iou_on_crops_equals_iou_on_full_masks(seed):
    masks = [m for m in _random_masks(seed, (33, 29), n=10)]
    insts = [InstanceMask(m, 1.0) for m in masks]
    on_crops = crop_iou_matrix([i.crop for i in insts], [i.box for i in insts])
    on_full = mask_iou_matrix(torch.from_numpy(np.stack(masks)).float())
    off_diagonal = ~torch.eye(len(masks), dtype=torch.bool)
    assert torch.allclose(on_crops[off_diagonal], on_full[off_diagonal], atol=1e-6)


@pytest.mark.parametrize("grid", [(4, 4), (5, 7), (33, 29), (10, 3)])
def test_cell_means_of_crops_equal_adaptive_pooling_of_full_masks(grid):
    for m in _random_masks(7, (33, 29)):
        inst = InstanceMask(m, 1.0)
        pooled = F.adaptive_avg_pool2d(torch.from_numpy(m).float()[None, None], grid)[0, 0].numpy()
        assert np.allclose(crop_cell_means(inst.crop, inst.box, inst.shape, grid), pooled, atol=1e-6)


def test_centre_is_the_centre_of_mass():
    for m in _random_masks(5)[1:]:
        ys, xs = np.nonzero(m)
        assert np.allclose(InstanceMask(m, 1.0).centre(), (ys.mean(), xs.mean()))
