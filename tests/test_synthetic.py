"""Synthetic data: deterministic, consistent labels, sensible sizes, valid COCO."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from engine.io.export import render_overlay
from engine.data.synthetic import (
    _BACKGROUND_SOURCES,
    _make_photo,
    _texture_bank,
    label_map_to_masks,
    make_sample,
    sample_seed,
    write_synthetic_dataset,
)

KINDS = ("photo", "cartoon", "microscopy")


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_arrays_different_seed_differs(kind: str) -> None:
    img_a, lab_a = make_sample(7, kind=kind)
    img_b, lab_b = make_sample(7, kind=kind)
    np.testing.assert_array_equal(img_a, img_b)
    np.testing.assert_array_equal(lab_a, lab_b)
    img_c, lab_c = make_sample(8, kind=kind)
    assert not np.array_equal(img_a, img_c)
    assert not np.array_equal(lab_a, lab_c)


def test_global_random_state_is_neither_used_nor_changed() -> None:
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    img_a, _ = make_sample(3)
    assert np.random.random() == before
    np.random.seed(999)
    img_b, _ = make_sample(3)
    np.testing.assert_array_equal(img_a, img_b)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_label_map_is_contiguous_and_every_instance_is_visible(kind: str, seed: int) -> None:
    img, lab = make_sample(seed, size=(200, 240), kind=kind)
    assert img.shape == (200, 240, 3) and img.dtype == np.uint8
    assert lab.shape == (200, 240) and lab.dtype == np.uint16
    ids = np.unique(lab)
    k = int(lab.max())
    assert k >= 1
    np.testing.assert_array_equal(ids, np.arange(0, k + 1))
    assert np.bincount(lab.ravel())[1:].min() >= 40
    assert (lab == 0).sum() > 0.3 * lab.size  # there is background


def _extents(lab: np.ndarray) -> np.ndarray:
    return np.array([max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) for sl in ndi.find_objects(lab)])


@pytest.mark.parametrize("kind", ["photo", "cartoon"])
def test_photo_and_cartoon_objects_are_within_size_range(kind: str) -> None:
    counts, extents = [], []
    for seed in range(8):
        _, lab = make_sample(seed, kind=kind)
        counts.append(int(lab.max()))
        extents.extend(_extents(lab).tolist())
    assert all(1 <= c <= 7 for c in counts)
    assert max(counts) >= 4  # several objects, not always just one or two
    assert max(extents) <= 142  # never larger than 140 px across at 320 x 320
    assert 40 <= float(np.median(extents)) <= 120


def _otsu_iou_and_colour_gaps(kind: str, seeds: range) -> tuple[list[float], list[float]]:
    otsu_ious, colour_gaps = [], []
    for seed in seeds:
        img, lab = make_sample(seed, kind=kind)
        gray = img.astype(float) @ np.array([0.2125, 0.7154, 0.0721])
        fg = gray > threshold_otsu(gray)
        if fg.sum() > fg.size / 2:
            fg = ~fg
        truth = lab > 0
        otsu_ious.append((fg & truth).sum() / (fg | truth).sum())
        bg_mean = img[~truth].mean(axis=0)
        for k in range(1, int(lab.max()) + 1):
            colour_gaps.append(float(np.linalg.norm(img[lab == k].mean(axis=0) - bg_mean)))
    return otsu_ious, colour_gaps


def test_cartoon_is_not_solved_by_otsu_but_objects_differ_in_colour() -> None:
    """Grey levels overlap (Otsu is imperfect), yet colour separates objects."""
    otsu_ious, colour_gaps = _otsu_iou_and_colour_gaps("cartoon", range(6))
    assert np.mean(otsu_ious) < 0.8
    assert np.median(colour_gaps) > 40  # on the 0..255 scale


def test_photo_is_not_solved_by_otsu_and_colour_overlaps_sometimes() -> None:
    """Real textures: Otsu fails, and some objects are camouflaged in mean colour."""
    otsu_ious, colour_gaps = _otsu_iou_and_colour_gaps("photo", range(10))
    assert np.mean(otsu_ious) < 0.6
    assert min(colour_gaps) < 40  # not every object stands out by its mean colour
    assert np.median(colour_gaps) > 20  # ... but most still differ from the background


def test_texture_bank_loads_offline_and_holds_grey_and_colour_sources() -> None:
    bank = _texture_bank()
    names = [name for name, _ in bank]
    assert len(set(names)) == len(names) >= 8
    assert _texture_bank() is bank  # cached
    assert any(arr.ndim == 2 for _, arr in bank) and any(arr.ndim == 3 for _, arr in bank)
    assert any(name in _BACKGROUND_SOURCES for name in names)
    for _, arr in bank:
        assert arr.dtype == np.uint8 and min(arr.shape[:2]) >= 200
        assert not arr.flags.writeable


@pytest.mark.parametrize("size", [(320, 320), (200, 240)])
def test_photo_objects_come_from_another_texture_source_than_the_background(size: tuple[int, int]) -> None:
    n_objects, n_distinct = 0, 0
    for seed in range(10):
        img, lab, sources = _make_photo(np.random.default_rng(seed), size)
        # the internal generator is what make_sample uses
        img2, lab2 = make_sample(seed, size=size, kind="photo")
        np.testing.assert_array_equal(img, img2)
        np.testing.assert_array_equal(lab, lab2)
        objects = sources["objects"]
        assert len(objects) == int(lab.max())
        assert sources["background"] in _BACKGROUND_SOURCES
        assert sources["background"] not in objects
        n_objects += len(objects)
        n_distinct += len(set(objects))
    assert n_distinct == n_objects  # distinct sources are preferred (more than enough exist)


def test_photo_differs_from_cartoon() -> None:
    assert not np.array_equal(make_sample(0, kind="photo")[0], make_sample(0, kind="cartoon")[0])


def test_microscopy_nuclei_are_15_to_30_px_and_grey() -> None:
    diameters, counts = [], []
    for seed in range(3):
        img, lab = make_sample(seed, kind="microscopy")
        np.testing.assert_array_equal(img[..., 0], img[..., 1])
        np.testing.assert_array_equal(img[..., 0], img[..., 2])
        areas = np.bincount(lab.ravel())[1:]
        diameters.extend(np.sqrt(4 * areas / np.pi).tolist())
        counts.append(len(areas))
        # nuclei are brighter than the background
        assert img[lab > 0, 0].mean() > img[lab == 0, 0].mean() + 30
    assert all(10 <= c <= 60 for c in counts)
    assert 15 <= float(np.mean(diameters)) <= 30


def test_microscopy_has_touching_nuclei() -> None:
    _, lab = make_sample(0, kind="microscopy")
    # a pixel of one nucleus directly next to a pixel of another
    right = (lab[:, :-1] > 0) & (lab[:, 1:] > 0) & (lab[:, :-1] != lab[:, 1:])
    down = (lab[:-1] > 0) & (lab[1:] > 0) & (lab[:-1] != lab[1:])
    assert right.any() or down.any()


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        make_sample(0, kind="xray")


def test_label_map_to_masks_round_trips() -> None:
    _, lab = make_sample(4, size=(96, 128))
    masks = label_map_to_masks(lab)
    assert len(masks) == lab.max()
    rebuilt = np.zeros_like(lab)
    for k, m in enumerate(masks, start=1):
        assert m.score == 1.0 and m.source == "gt"
        rebuilt[m.mask] = k
    np.testing.assert_array_equal(rebuilt, lab)


@pytest.mark.parametrize("kind", KINDS)
def test_write_synthetic_dataset_round_trips_through_pycocotools(tmp_path: Path, kind: str) -> None:
    n, size = 3, (96, 128)
    image_dir, gt_json = write_synthetic_dataset(tmp_path / "ds", n, seed=5, size=size, kind=kind)
    assert image_dir == tmp_path / "ds" / "images" and gt_json == tmp_path / "ds" / "gt.json"
    assert sorted(p.name for p in image_dir.iterdir()) == [f"img_{i:04d}.png" for i in range(n)]

    coco = COCO(str(gt_json))
    assert len(coco.getImgIds()) == n
    n_expected = 0
    for i, img_info in enumerate(coco.loadImgs(sorted(coco.getImgIds()))):
        assert img_info["file_name"] == f"img_{i:04d}.png"
        assert (img_info["height"], img_info["width"]) == size
        image, labels = make_sample(sample_seed(5, i), size=size, kind=kind)
        np.testing.assert_array_equal(np.asarray(Image.open(image_dir / img_info["file_name"])), image)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_info["id"]]))
        assert len(anns) == labels.max()
        rebuilt = np.zeros(size, dtype=np.uint16)
        for k, ann in enumerate(anns, start=1):
            assert isinstance(ann["segmentation"], dict)  # RLE, not polygons
            assert ann["area"] == int((labels == k).sum())
            rebuilt[mask_utils.decode(ann["segmentation"]).astype(bool)] = k
        np.testing.assert_array_equal(rebuilt, labels)
        n_expected += int(labels.max())
    assert len(coco.getAnnIds()) == n_expected
    assert json.loads(gt_json.read_text())["info"]["kind"] == kind


def test_write_synthetic_dataset_refuses_to_overwrite(tmp_path: Path) -> None:
    _, gt_json = write_synthetic_dataset(tmp_path, 1, size=(64, 64))
    before = gt_json.read_bytes()
    with pytest.raises(FileExistsError):
        write_synthetic_dataset(tmp_path, 2, size=(64, 64))
    assert gt_json.read_bytes() == before
    assert len(list((tmp_path / "images").iterdir())) == 1  # nothing half-written
    write_synthetic_dataset(tmp_path, 3, size=(64, 64), overwrite=True)
    assert len(json.loads(gt_json.read_text())["images"]) == 3
    # a smaller replacement leaves exactly the annotated images in the folder
    write_synthetic_dataset(tmp_path, 2, size=(64, 64), overwrite=True)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["img_0000.png", "img_0001.png"]
    assert json.loads(gt_json.read_text())["info"]["n"] == 2


def test_render_overlay_colours_masks_and_keeps_background() -> None:
    img = np.full((40, 50, 3), 100, dtype=np.uint8)
    a = np.zeros((40, 50), dtype=bool)
    a[5:20, 5:20] = True
    b = np.zeros((40, 50), dtype=bool)
    b[22:35, 25:45] = True
    out = render_overlay(img, [a, b], scores=[0.9, 0.2])
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[~(a | b)], img[~(a | b)])
    assert not np.array_equal(out[10, 10], img[10, 10])
    assert not np.array_equal(out[10, 10], out[28, 35])  # distinct colours
    # higher score, stronger fill: further from the underlying grey
    assert np.abs(out[12, 12].astype(int) - 100).sum() > np.abs(out[28, 35].astype(int) - 100).sum()
    np.testing.assert_array_equal(render_overlay(img, [a, b]), render_overlay(img, [a, b]))
    grey = render_overlay(img[..., 0], [a])
    assert grey.shape == (40, 50, 3)
    as_float = render_overlay(img.astype(np.float32) / 255.0, [a])
    np.testing.assert_array_equal(as_float, render_overlay(img, [a]))
    # masks as crops at their boxes (only the crops are drawn): the same picture
    crops = render_overlay(img, [a[5:20, 5:20], b[20:36, 25:45]], [0.9, 0.2], boxes=[(5, 20, 5, 20), (20, 36, 25, 45)])
    np.testing.assert_array_equal(crops, out)
    edge = np.zeros((40, 50), dtype=bool)
    edge[30:, 40:] = True  # a mask on the image's corner: outlined along the border too
    np.testing.assert_array_equal(render_overlay(img, [edge[30:, 40:]], boxes=[(30, 40, 40, 50)]),
                                  render_overlay(img, [edge]))
    with pytest.raises(ValueError, match="does not fit"):
        render_overlay(img, [a[5:20, 5:20]], boxes=[(30, 45, 5, 20)])
