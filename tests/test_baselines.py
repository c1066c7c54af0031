"""Classical baselines find obvious objects, and watershed splits touching ones."""

from __future__ import annotations

import numpy as np
import pytest

from engine.generators.classical import BASELINES, otsu_components, otsu_watershed
from engine.structures import InstanceMask


def _disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _render(masks: list[np.ndarray], seed: int = 0) -> np.ndarray:
    """Bright discs (~200) on a dark background (~40) with mild noise, RGB uint8."""
    rng = np.random.default_rng(seed)
    img = np.full(masks[0].shape, 40.0)
    for m in masks:
        img[m] = 200.0
    img += rng.normal(0, 6, img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=2)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _best_ious(gts: list[np.ndarray], preds: list[InstanceMask]) -> list[float]:
    return [max((_iou(g, p.mask) for p in preds), default=0.0) for g in gts]


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_baseline_finds_two_separated_discs(name: str) -> None:
    shape = (128, 128)
    discs = [_disc(shape, 40, 40, 16), _disc(shape, 85, 90, 20)]
    preds = BASELINES[name](_render(discs))
    assert all(iou > 0.8 for iou in _best_ious(discs, preds)), name
    for p in preds:
        assert p.source == name
        assert 0.0 < p.score <= 1.0
        assert p.mask.shape == shape and p.mask.dtype == bool
    # the two discs are the best-scoring instances, so AP ranking is meaningful
    top2 = sorted(preds, key=lambda p: -p.score)[:2]
    assert all(iou > 0.8 for iou in _best_ious([p.mask for p in top2], [InstanceMask(d, 1.0) for d in discs]))


def test_dark_objects_on_light_background_use_minority_polarity() -> None:
    shape = (96, 96)
    disc = _disc(shape, 48, 48, 15)
    img = 255 - _render([disc])
    preds = otsu_components(img)
    assert len(preds) == 1
    assert _iou(preds[0].mask, disc) > 0.8


def test_watershed_splits_touching_discs_that_components_merge() -> None:
    shape = (128, 128)
    a, b = _disc(shape, 64, 44, 20), _disc(shape, 64, 82, 20)  # overlap by 2 px
    img = _render([a, b])
    merged = otsu_components(img)
    assert len(merged) == 1
    assert _iou(merged[0].mask, a | b) > 0.8

    split = otsu_watershed(img)
    assert len(split) == 2
    assert all(iou > 0.8 for iou in _best_ious([a, b], split))


def test_blank_image_gives_no_instances() -> None:
    img = np.full((64, 64, 3), 128, dtype=np.uint8)
    for name, fn in BASELINES.items():
        assert fn(img) == [], name


def test_min_area_drops_specks() -> None:
    shape = (96, 96)
    big, speck = _disc(shape, 40, 40, 14), _disc(shape, 80, 80, 2)
    img = _render([big, speck])
    assert len(otsu_components(img, min_area=5)) == 2
    assert len(otsu_components(img, min_area=30)) == 1


def test_local_watershed_finds_a_faint_object_beside_bright_ones() -> None:
    from engine.generators.classical import local_block, local_watershed

    shape = (160, 160)
    bright = [_disc(shape, 40, 40, 14), _disc(shape, 40, 110, 14)]
    faint = _disc(shape, 115, 75, 14)
    img = _render(bright)
    grey = img[..., 0].astype(float)
    grey[faint] = 110 + (grey[faint] - 40)  # well above the background, well below the bright discs
    img = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    assert max(_best_ious([faint], otsu_watershed(img))) < 0.5  # one global threshold misses it
    found = local_watershed(img, object_size=28)
    assert min(_best_ious(bright + [faint], found)) > 0.7
    assert {m.source for m in found} == {"local_watershed"}
    assert local_block(shape, 28) == 113 and local_block(shape) == 33 and local_block(shape, 0.5) == 3
