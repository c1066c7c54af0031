"""SOLOv2 label assignment: hand-made masks, a brute-force loop reference, and speed."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from engine.solo.targets import (
    TargetConfig,
    assign_targets,
    batch_targets,
    downweight_negatives,
    mask_target_size,
)

ONE_LEVEL = TargetConfig(num_grids=(16,), scale_ranges=((1, 2048),))


def _box(h: int, w: int, y0: int, x0: int, bh: int, bw: int) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0 : y0 + bh, x0 : x0 + bw] = True
    return m


def _centred_square(side: int, size: int = 256) -> torch.Tensor:
    y0 = (size - side) // 2
    return _box(size, size, y0, y0, side, side)


def _levels_with_positives(t) -> list[int]:
    return [lvl for lvl in range(t.num_levels) if t.positive_index[lvl].numel() > 0]


def _check_consistent(t) -> None:
    """positive_index / instance_index / category / weight agree with each other on every level."""
    for lvl in range(t.num_levels):
        cat = t.category[lvl]
        s = cat.shape[-1]
        pos = t.positive_index[lvl]
        assert cat.shape == (s, s) and t.weight[lvl].shape == (s, s)
        assert set(torch.unique(cat).tolist()) <= {0.0, 1.0}
        assert torch.equal(torch.nonzero(cat.reshape(-1)).squeeze(1), pos)
        assert pos.dtype == torch.long and t.instance_index[lvl].dtype == torch.long
        assert t.instance_index[lvl].shape == pos.shape
        if pos.numel():
            assert int(t.instance_index[lvl].max()) < t.num_instances


def test_centre_square_goes_to_level0_centre_cell():
    t = assign_targets(_centred_square(40)[None], (256, 256))
    _check_consistent(t)
    assert _levels_with_positives(t) == [0]
    s = 40
    pos = t.positive_index[0]
    centre = math.floor(128 / 256 * s)
    assert centre * s + centre in pos.tolist()
    assert 1 <= pos.numel() <= 9
    # sigma 0.2 * 40 px = 8 px centre box over 6.4 px cells: rows/cols 19..20.
    assert sorted(pos.tolist()) == [19 * s + 19, 19 * s + 20, 20 * s + 19, 20 * s + 20]
    assert torch.all(t.instance_index[0] == 0)
    mt = t.mask_targets(0)
    assert mt.shape == (4, 64, 64)
    assert mt.min() >= 0 and mt.max() <= 1
    assert mt[0].sum().item() == pytest.approx(40 * 40 / 16)


@pytest.mark.parametrize(
    "side, levels",
    [(40, [0]), (60, [0, 1]), (100, [1, 2]), (150, [1, 2]), (200, [2, 3])],
)
def test_scale_ranges_overlap(side: int, levels: list[int]):
    t = assign_targets(_centred_square(side, 400)[None], (400, 400))
    _check_consistent(t)
    assert _levels_with_positives(t) == levels
    for lvl in levels:
        assert t.positive_index[lvl].numel() <= 9


def test_region_at_most_3x3_for_huge_object():
    t = assign_targets(_centred_square(240)[None], (256, 256), ONE_LEVEL)
    pos = t.positive_index[0]
    assert pos.numel() == 9
    rows, cols = pos // 16, pos % 16
    assert rows.max() - rows.min() == 2 and cols.max() - cols.min() == 2
    assert (8 * 16 + 8) in pos.tolist()


def test_corner_object_is_clipped_to_grid():
    # Dense 10x10 block in the corner plus one far pixel: the mass centre sits ~7 px from the
    # border while the centre region (0.1 * 200 px box = 20 px) reaches past it.
    m = _box(256, 256, 0, 0, 10, 10)
    m[199, 199] = True
    t = assign_targets(m[None], (256, 256), ONE_LEVEL)
    _check_consistent(t)
    assert sorted(t.positive_index[0].tolist()) == [0, 1, 16, 17]

    flipped = m.flip(0).flip(1)
    t = assign_targets(flipped[None], (256, 256), ONE_LEVEL)
    assert sorted(t.positive_index[0].tolist()) == [14 * 16 + 14, 14 * 16 + 15, 15 * 16 + 14, 255]


@pytest.mark.parametrize("small_first", [True, False])
def test_smaller_instance_wins_shared_cells(small_first: bool):
    big, small = _centred_square(80), _centred_square(40)
    masks = torch.stack([small, big] if small_first else [big, small])
    small_id, big_id = (0, 1) if small_first else (1, 0)
    t = assign_targets(masks, (256, 256))
    _check_consistent(t)
    s = 40
    owner = {int(p): int(i) for p, i in zip(t.positive_index[0], t.instance_index[0])}
    small_cells = {r * s + c for r in (19, 20) for c in (19, 20)}
    big_cells = {r * s + c for r in (19, 20, 21) for c in (19, 20, 21)}
    assert set(owner) == big_cells
    for cell, inst in owner.items():
        assert inst == (small_id if cell in small_cells else big_id)
    # Mask targets follow the owner.
    mt = t.mask_targets(0)
    for k, cell in enumerate(t.positive_index[0].tolist()):
        expected = (40 if cell in small_cells else 80) ** 2 / 16
        assert mt[k].sum().item() == pytest.approx(expected)


def test_equal_area_tie_goes_to_lower_index():
    a = _centred_square(40)
    b = a.roll(3, dims=1)  # same area, overlapping cells
    t = assign_targets(torch.stack([b, a]), (256, 256))
    shared = set(assign_targets(a[None], (256, 256)).positive_index[0].tolist()) & set(
        assign_targets(b[None], (256, 256)).positive_index[0].tolist()
    )
    assert shared
    owner = dict(zip(t.positive_index[0].tolist(), t.instance_index[0].tolist()))
    assert all(owner[c] == 0 for c in shared)


def test_empty_image_and_empty_masks():
    for masks in (torch.zeros(0, 128, 96, dtype=torch.bool), torch.zeros(2, 128, 96)):
        t = assign_targets(masks, (128, 96), TargetConfig.cpu_small())
        _check_consistent(t)
        assert t.num_levels == 3
        for lvl, s in enumerate((24, 16, 12)):
            assert t.category[lvl].shape == (s, s) and t.category[lvl].sum() == 0
            assert torch.all(t.weight[lvl] == 1)
            assert t.positive_index[lvl].numel() == 0
            assert t.mask_targets(lvl).shape == (0, 32, 24)


def test_weights_propagate_to_positive_cells_only():
    a = _box(256, 256, 20, 20, 40, 40)
    b = _box(256, 256, 150, 160, 50, 30)
    t = assign_targets(torch.stack([a, b]), (256, 256), weights=torch.tensor([0.3, 0.7]))
    _check_consistent(t)
    for lvl in range(t.num_levels):
        w = t.weight[lvl].reshape(-1)
        pos = t.positive_index[lvl]
        expected = torch.tensor([0.3, 0.7])[t.instance_index[lvl]]
        assert torch.allclose(w[pos], expected)
        neg = torch.ones_like(w, dtype=torch.bool)
        neg[pos] = False
        assert torch.all(w[neg] == 1)
    assert {0, 1} <= set(t.instance_index[0].tolist())


def test_downweight_negatives_only_inside_ignore_masks():
    h, w = 256, 256
    obj = _centred_square(40)
    ignore = _box(h, w, 100, 60, 60, 90)  # overlaps the object's cells and some background
    t = assign_targets(obj[None], (h, w), weights=torch.tensor([0.5]))
    d = downweight_negatives(t, ignore[None], factor=0.1)
    for lvl in range(t.num_levels):
        s = t.category[lvl].shape[-1]
        before, after = t.weight[lvl], d.weight[lvl]
        for i in range(s):
            for j in range(s):
                y = int((i + 0.5) * h / s)
                x = int((j + 0.5) * w / s)
                if t.category[lvl][i, j] == 0 and ignore[y, x]:
                    assert after[i, j] == pytest.approx(0.1 * before[i, j])
                else:
                    assert after[i, j] == before[i, j]
    lvl0 = t.category[0] > 0
    assert torch.all(d.weight[0][lvl0] == 0.5)  # positives kept their weight
    assert (d.weight[0] < 1).sum() > lvl0.sum()  # some negatives were down-weighted
    assert torch.equal(d.category[0], t.category[0])
    assert d is not t and torch.all(t.weight[0][~lvl0] == 1)  # original untouched


def test_batch_targets_indices():
    h, w = 128, 160
    cfg = TargetConfig.cpu_small()
    img0 = torch.stack([_box(h, w, 10, 10, 30, 30), _box(h, w, 60, 80, 50, 60)])
    img1 = torch.zeros(0, h, w, dtype=torch.bool)
    img2 = torch.stack([_box(h, w, 40, 40, 20, 25)])
    ign = [None, None, _box(h, w, 0, 0, 128, 20)[None]]
    bt = batch_targets([img0, img1, img2], (h, w), cfg, [torch.tensor([1.0, 0.5]), None, None], ign)
    singles = [assign_targets(m, (h, w), cfg) for m in (img0, img1, img2)]
    for lvl, s in enumerate(cfg.num_grids):
        assert bt.category[lvl].shape == (3, s, s) and bt.weight[lvl].shape == (3, s, s)
        counts = [int(t.positive_index[lvl].numel()) for t in singles]
        assert bt.batch_index[lvl].tolist() == sum(([i] * c for i, c in enumerate(counts)), [])
        assert torch.equal(
            bt.positive_index[lvl], torch.cat([t.positive_index[lvl] for t in singles])
        )
        assert torch.equal(
            bt.instance_index[lvl], torch.cat([t.instance_index[lvl] for t in singles])
        )
        flat = bt.category[lvl].reshape(-1)
        assert torch.all(flat[bt.flat_index(lvl)] == 1)
        assert flat.sum() == bt.flat_index(lvl).numel()
        assert bt.mask_targets(lvl).shape == (sum(counts), 32, 40)
    assert any(bt.positive_index[lvl].numel() for lvl in range(3))
    assert torch.all(bt.category[0][1] == 0)
    assert (bt.weight[0][2] < 1).any() and torch.all(bt.weight[0][1] == 1)
    assert (bt.weight[0][0] == 0.5).any()


def test_mask_targets_are_soft_coverage():
    m = torch.zeros(1, 30, 30, dtype=torch.bool)
    m[0, 2:10, 0:4] = True  # rows 2..9: block row 0 half covered, row 1 fully, row 2 half
    t = assign_targets(m, (30, 30), ONE_LEVEL)
    assert mask_target_size((30, 30), 4) == (8, 8)
    assert t.masks.shape == (1, 8, 8)
    assert t.masks[0, :3, 0].tolist() == [0.5, 1.0, 0.5]
    assert t.masks[0].sum().item() == pytest.approx(32 / 16)


def test_input_validation_and_float_masks():
    m = _centred_square(40)
    with pytest.raises(ValueError):
        assign_targets(m[None], (200, 256))
    with pytest.raises(ValueError):
        assign_targets(m[None], (256, 256), weights=torch.ones(2))
    with pytest.raises(ValueError):
        TargetConfig(num_grids=(12,), scale_ranges=((1, 2), (2, 3)))
    tb = assign_targets(m[None], (256, 256))
    tf = assign_targets(m[None].float() * 0.9, (256, 256))
    for lvl in range(tb.num_levels):
        assert torch.equal(tb.positive_index[lvl], tf.positive_index[lvl])


def test_from_head_copies_grids_and_ranges():
    from types import SimpleNamespace

    head = SimpleNamespace(num_grids=[24, 16, 12], scale_ranges=[[1, 96], [48, 192], [96, 2048]])
    cfg = TargetConfig.from_head(head, mask_stride=8)
    assert cfg.num_grids == (24, 16, 12) and cfg.scale_ranges[2] == (96.0, 2048.0)
    assert cfg.mask_stride == 8 and cfg.sigma == 0.2
    t = assign_targets(_centred_square(40)[None], (256, 256), cfg)
    assert [c.shape[-1] for c in t.category] == [24, 16, 12] and t.masks.shape[-1] == 32


# --------------------------------------------------------------------------- reference


def _reference(masks: np.ndarray, cfg: TargetConfig) -> list[dict[int, int]]:
    """Straightforward per-instance, per-cell loops; returns {flat cell: owner} per level."""
    _, h, w = masks.shape
    inst = []
    for k, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if len(ys) == 0:
            continue
        box_h = ys.max() - ys.min() + 1
        box_w = xs.max() - xs.min() + 1
        inst.append(
            dict(k=k, area=len(ys), cy=ys.mean() + 0.5, cx=xs.mean() + 0.5, bh=box_h, bw=box_w)
        )
    out = []
    for s, (lo, hi) in zip(cfg.num_grids, cfg.scale_ranges):
        owner: dict[int, int] = {}
        # Paint larger areas first (and higher index first among equals): the last writer wins.
        for d in sorted(inst, key=lambda d: (-d["area"], -d["k"])):
            if not lo <= math.sqrt(d["bh"] * d["bw"]) <= hi:
                continue
            hh, hw = 0.5 * cfg.sigma * d["bh"], 0.5 * cfg.sigma * d["bw"]
            ch = min(max(math.floor(d["cy"] / h * s), 0), s - 1)
            cw = min(max(math.floor(d["cx"] / w * s), 0), s - 1)
            top = max(0, math.floor((d["cy"] - hh) / h * s), ch - 1)
            down = min(s - 1, math.floor((d["cy"] + hh) / h * s), ch + 1)
            left = max(0, math.floor((d["cx"] - hw) / w * s), cw - 1)
            right = min(s - 1, math.floor((d["cx"] + hw) / w * s), cw + 1)
            for i in range(top, down + 1):
                for j in range(left, right + 1):
                    owner[i * s + j] = d["k"]
        out.append(owner)
    return out


def _random_masks(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Mix of ellipses and rectangles of widely varying size, overlapping each other."""
    g = torch.Generator().manual_seed(seed)
    cy = torch.rand(n, generator=g) * h
    cx = torch.rand(n, generator=g) * w
    ry = torch.exp(torch.rand(n, generator=g) * math.log(h / 2 / 3)) * 3
    rx = ry * (0.5 + torch.rand(n, generator=g))
    yy = torch.arange(h).float()[None, :, None] + 0.5
    xx = torch.arange(w).float()[None, None, :] + 0.5
    dy = (yy - cy[:, None, None]) / ry[:, None, None]
    dx = (xx - cx[:, None, None]) / rx[:, None, None]
    ellipse = dy**2 + dx**2 <= 1
    rect = (dy.abs() <= 1) & (dx.abs() <= 1)
    is_rect = (torch.rand(n, generator=g) < 0.4)[:, None, None]
    return torch.where(is_rect, rect, ellipse)


@pytest.mark.parametrize("cfg", [TargetConfig(), TargetConfig.cpu_small()], ids=["default", "cpu"])
def test_matches_brute_force_reference(cfg: TargetConfig):
    h, w = 320, 384
    masks = _random_masks(40, h, w, seed=7)
    masks[5] = False  # an empty mask is skipped
    masks[6, :, :] = False
    masks[6, 0:3, 200:380] = True  # thin border strip
    t = assign_targets(masks, (h, w), cfg)
    _check_consistent(t)
    ref = _reference(masks.numpy(), cfg)
    assert sum(len(r) for r in ref) > 50  # the case is not trivial
    for lvl in range(cfg.num_levels):
        got = dict(zip(t.positive_index[lvl].tolist(), t.instance_index[lvl].tolist()))
        assert got == ref[lvl]


def test_vectorised_speed_50_instances():
    h, w = 512, 512
    masks = _random_masks(50, h, w, seed=3)
    weights = torch.rand(50)
    assign_targets(masks[:2], (h, w))  # warm up
    start = time.perf_counter()
    t = assign_targets(masks, (h, w), weights=weights)
    elapsed = time.perf_counter() - start
    _check_consistent(t)
    assert sum(p.numel() for p in t.positive_index) > 0
    assert elapsed < 0.5, f"assign_targets took {elapsed:.3f} s for 50 instances"
