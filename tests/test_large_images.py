"""Slide-sized images without full-size float copies: banded resizing and uint8 guide statistics
give what the one-piece float computations give."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.geometry import resize_image
from engine.ops.guided_filter import GuideStats


def _image(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (*shape, 3), dtype=np.uint8)


@pytest.mark.parametrize("shape,size", [((700, 500), (233, 166)), ((300, 90), (120, 45)), ((120, 400), (200, 133)),
                                        ((64, 64), (64, 64)), ((50, 40), (100, 80))])
def test_banded_resize_equals_one_resize(shape, size):
    image = _image(shape)
    t = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float()
    shrink = size[0] < shape[0] or size[1] < shape[1]
    one = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=shrink).clamp(0, 255)
    assert torch.equal(resize_image(image, size, rows_per_band=37), one)


@pytest.mark.parametrize("shape,max_side", [((240, 160), 60), ((250, 170), 60), ((233, 157), 100), ((40, 30), 512)])
def test_guide_stats_of_a_uint8_image_equal_the_float_guide(shape, max_side):
    """Integer factors (240 / 60 = 4) give the same numbers; others area-average in two passes (rounding only)."""
    image = _image(shape, 1)
    as_float = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1) / 255.0
    a = GuideStats.compute(as_float, 6, 1e-3, max_side=max_side)
    b = GuideStats.compute(image, 6, 1e-3, max_side=max_side)
    assert b.factor == a.factor and b.full_guide.dtype == np.uint8
    exact = float(a.factor).is_integer()
    for x, y in ((a.guide, b.guide), (a.mean, b.mean)):
        assert torch.equal(x, y) if exact else torch.allclose(x, y, atol=1e-5)
    soft = torch.rand(12, 9, generator=torch.Generator().manual_seed(0))
    box = (10, shape[0] - 20, 5, shape[1] - 7)
    assert torch.allclose(a.filter_soft(soft, box), b.filter_soft(soft, box), atol=1e-3 if not exact else 1e-6)


@pytest.mark.parametrize("shape,factor", [((240, 160), 4.0), ((250, 170), 4.0), ((233, 157), 2.33), ((90, 70), 1.0)])
def test_the_guide_is_pooled_band_by_band_as_in_one_piece(shape, factor):
    from engine.ops.guided_filter import _pooled

    full = torch.from_numpy(_image(shape, 2).astype(np.float32)).permute(2, 0, 1) / 255.0
    banded = _pooled(lambda r0, r1: full[:, r0:r1], shape, factor, rows_per_band=23)
    if factor == 1.0:
        assert torch.equal(banded, full)
    elif float(factor).is_integer():
        k = int(factor)
        pad = (0, (-shape[1]) % k, 0, (-shape[0]) % k)
        assert torch.equal(banded, F.avg_pool2d(F.pad(full[None], pad, mode="replicate"), k)[0])
    else:
        size = (round(shape[0] / factor), round(shape[1] / factor))
        assert torch.allclose(banded, F.interpolate(full[None], size=size, mode="area")[0], atol=1e-6)


@pytest.mark.parametrize("shape", [(700, 300), (100, 80), (300, 700, 1)])
def test_the_grey_analysis_copy_is_made_band_by_band_as_in_one_piece(shape):
    from scipy import ndimage

    from engine.freemask.input_scale import _gray_small

    image = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    if len(shape) == 3 and shape[2] == 1:
        image = image[..., 0]
    gray = image.astype(np.float32).mean(axis=2) / 255.0 if image.ndim == 3 else image.astype(np.float32) / 255.0
    f = max(1.0, max(gray.shape) / 256)
    one = ndimage.zoom(ndimage.uniform_filter(gray, size=int(round(f))), 1.0 / f, order=1) if f > 1 else gray
    banded, factor = _gray_small(image, rows_per_band=29)
    assert factor == f and np.array_equal(banded, one)


@pytest.mark.parametrize("shape,max_side", [((240, 160), 60), ((233, 157), 100), ((90, 70), 512)])
def test_masks_filtered_band_by_band_equal_one_piece(shape, max_side):
    stats = GuideStats.compute(_image(shape, 4), 6, 1e-3, max_side=max_side)
    soft = torch.rand(12, 9, generator=torch.Generator().manual_seed(1))
    for box in ((0, shape[0], 0, shape[1]), (17, shape[0] - 3, 9, shape[1] - 30)):
        one = stats.filter_soft(soft, box)
        assert torch.equal(stats.filter_soft(soft, box, band_px=50), one)
        for tau in (0.3, 0.5):
            assert torch.equal(stats.filter_soft(soft, box, tau=tau, band_px=70), one.clamp(0, 1) >= tau)


def test_largest_part_of_a_mask_with_more_than_65535_parts():
    """16-bit labels are tried first; a mask with more parts falls back to 32-bit and gives the same answer."""
    from scipy import ndimage

    from engine.ops.masks import largest_part

    mask = np.zeros((600, 600), bool)
    mask[::2, ::2] = True  # 90,000 single pixels
    mask[100:104, 200:203] = True  # ... and one 12-pixel part
    labels, _n = ndimage.label(mask, structure=np.ones((3, 3)))
    assert labels.max() > 65535
    assert np.array_equal(largest_part(mask), labels == labels[101, 201])
    few = np.zeros((50, 50), bool)
    few[1:4, 1:4] = few[10:30, 10:12] = True
    assert np.array_equal(largest_part(few), ndimage.label(few)[0] == 2)


@pytest.mark.parametrize("kind", ["microscopy", "photo"])
def test_object_size_of_a_large_image_from_its_block_averaged_copy_equals_the_float_copys(kind):
    """Images over EXACT_LIMIT_PX are block-averaged band by band before the box filter (no float copy of
    the whole image); on a 4100 x 1400 mosaic (forced onto both paths) the estimate is the same."""
    from engine.data.synthetic import make_sample
    from engine.freemask.input_scale import _gray_small, estimate_object_size

    tile, _ = make_sample(11, (320, 320), kind=kind)
    image = np.ascontiguousarray(np.tile(tile, (13, 5, 1) if tile.ndim == 3 else (13, 5))[:4100, :1400])
    exact, f = _gray_small(image, exact_limit_px=10**12)
    shrunk, f2 = _gray_small(image, exact_limit_px=0)
    assert f2 == f and shrunk.shape == exact.shape and shrunk.dtype == np.float32
    assert np.abs(shrunk - exact).max() < 0.1 and np.corrcoef(shrunk.ravel(), exact.ravel())[0, 1] > 0.95
    assert estimate_object_size(image, exact_limit_px=0) == pytest.approx(estimate_object_size(image, exact_limit_px=10**12))


@pytest.mark.parametrize("connectivity", [1, 2])
def test_largest_part_labelled_in_bands_equals_one_labelling(connectivity):
    """Huge masks are labelled in row bands joined across the edges: the same part as one labelling,
    ties included (the part met first in scan order), for every band height."""
    from engine.ops.masks import largest_part

    rng = np.random.default_rng(connectivity)
    cases = [rng.random(tuple(rng.integers(1, 40, 2))) < rng.uniform(0.1, 0.7) for _ in range(60)]
    tie = np.zeros((20, 20), bool)
    tie[12:15, 2:5] = tie[2:5, 12:15] = True  # two equal squares, the upper one first
    diagonal = np.eye(12, dtype=bool)  # one part with 8-connectivity, twelve with 4
    for mask in [*cases, tie, diagonal, np.zeros((5, 5), bool)]:
        one = largest_part(mask, connectivity)
        for rows in (1, 2, 5):
            banded = largest_part(mask, connectivity, band_px=rows * mask.shape[1], banded_over_px=0)
            assert banded.dtype == bool and np.array_equal(banded, one)
    assert largest_part(tie, connectivity, band_px=20, banded_over_px=0)[2:5, 12:15].all()
