"""Free Mask post-processing: pure functions on hand-made features, plus one real backbone pass."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.freemask.features import FeatureConfig, Features
from engine.freemask.postprocess import FreeMaskParams, postprocess
from engine.freemask.queries import build_queries, query_cell_ratio
from engine.ops.masks import maskness
from engine.freemask.soft_masks import query_similarity, soft_masks
from engine.ops.guided_filter import upsample_crop


def toy_features(size=(48, 64), image_size=None) -> tuple[Features, np.ndarray]:
    """Keys with three 'objects' (distinct unit vectors) on a background vector."""
    h, w = size
    keys = torch.zeros(4, h, w)
    keys[0] = 1.0
    truth = np.zeros((h, w), np.int32)
    for k, (y0, y1, x0, x1) in enumerate([(4, 16, 4, 20), (24, 40, 30, 50), (8, 20, 44, 60)], start=1):
        keys[:, y0:y1, x0:x1] = 0
        keys[k, y0:y1, x0:x1] = 1.0
        truth[y0:y1, x0:x1] = k
    keys = F.normalize(keys + 0.02 * torch.randn(4, h, w, generator=torch.Generator().manual_seed(0)), dim=0)
    H, W = image_size or (h * 8, w * 8)
    feats = Features(keys=keys, image_size=(H, W), input_size=(H, W), input_scale=1.0, auto_scale=False,
                     object_size=None, config=FeatureConfig())
    return feats, truth


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_query_pyramid_sizes_and_unit_norm():
    feats, _ = toy_features()
    q = build_queries(feats.keys, (1.0, 0.5, 0.25), query_stride=32)
    # stride-8 keys 48×64 -> base query grid 12×16, then 6×8 and 3×4
    assert q.vectors.shape == (12 * 16 + 6 * 8 + 3 * 4, 4)
    assert torch.allclose(q.vectors.norm(dim=1), torch.ones(len(q.vectors)), atol=1e-5)
    assert set(q.scale.tolist()) == {1.0, 0.5, 0.25}


def test_query_grid_sized_to_the_image():
    feats, _ = toy_features()
    q = build_queries(feats.keys, (1.0,), query_stride=None)
    # keys 48×64: 16 cells on the short side (not 12), 21 on the long one
    assert q.vectors.shape[0] == 16 * 21
    assert query_cell_ratio((40, 40), None) == 16 / 40  # a 320² input: 16×16 queries, not 10×10
    assert query_cell_ratio((200, 300), None) == 0.25  # large inputs keep stride 32
    assert query_cell_ratio((8, 12), None) == 1.0  # never finer than the key grid
    assert query_cell_ratio((40, 40), 16) == 0.5


def test_soft_masks_are_min_max_normalised():
    feats, _ = toy_features()
    q = build_queries(feats.keys, (1.0,), 32)
    s = soft_masks(q.vectors, feats.keys)
    assert torch.allclose(s.min(dim=1).values, torch.zeros(len(s)), atol=1e-6)
    assert torch.allclose(s.max(dim=1).values, torch.ones(len(s)), atol=1e-6)


def test_maskness_is_mean_soft_value_inside():
    soft = torch.tensor([[0.2, 0.6, 0.8, 1.0], [0.1, 0.1, 0.1, 0.9]])
    binary, area, m = maskness(soft, 0.5)
    assert area.tolist() == [3, 1]
    assert torch.allclose(m, torch.tensor([(0.6 + 0.8 + 1.0) / 3, 0.9]))


def test_postprocess_finds_the_three_objects_without_refinement():
    feats, truth = toy_features()
    res = postprocess(feats, FreeMaskParams(refine=False, top_k=10))
    H, W = feats.image_size
    big_truth = np.kron(truth, np.ones((8, 8), np.int32))
    for k in (1, 2, 3):
        best = max(_iou(m.mask, big_truth == k) for m in res.instances)
        assert best > 0.8, f"object {k} not found (best IoU {best:.2f})"
    # duplicates of one object are decayed by Matrix NMS: object masks rank above their duplicates
    scores = [m.score for m in res.instances]
    assert scores == sorted(scores, reverse=True)
    assert all(m.mask.shape == (H, W) and m.mask.dtype == bool for m in res.instances)
    inst = res.instances[0]
    assert inst.source == "freemask" and 0 < inst.maskness <= 1
    assert inst.extra["scale"] in (1.0, 0.5, 0.25) and len(inst.extra["embedding"]) == 4
    # near-identical queries are merged before scoring: 4 distinct vectors (+ noise) remain few
    assert res.candidate_maskness.size > 0 and 4 <= res.n_queries < 12 * 16 + 6 * 8 + 3 * 4


def test_top_k_min_area_and_area_filters():
    feats, _ = toy_features()
    assert len(postprocess(feats, FreeMaskParams(refine=False, top_k=2)).instances) == 2
    big = postprocess(feats, FreeMaskParams(refine=False, min_area=250_000)).instances
    assert big == []
    res = postprocess(feats, FreeMaskParams(refine=False, max_area_frac=0.3)).instances
    H, W = feats.image_size
    assert res and all(m.area <= 0.3 * H * W for m in res)
    res = postprocess(feats, FreeMaskParams(refine=False, max_border_sides=0)).instances
    assert res and all(not (m.mask[0].any() or m.mask[-1].any() or m.mask[:, 0].any() or m.mask[:, -1].any()) for m in res)


def test_official_filters_drop_top_objects_and_wide_masks():
    feats, _ = toy_features()
    H, W = feats.image_size
    res = postprocess(feats, FreeMaskParams(refine=False, center_y_min=0.2, max_box_width=0.95)).instances
    for m in res:
        ys, xs = np.nonzero(m.mask)
        assert ys.mean() > 0.2 * H and xs.max() - xs.min() + 1 < 0.95 * W


def test_split_components_separates_a_two_part_mask():
    feats, truth = toy_features()
    # make objects 1 and 3 share one feature vector: one query's mask then has two parts
    keys = feats.keys.clone()
    keys[:, 8:20, 44:60] = keys[:, 10, 10][:, None, None]
    feats.keys = keys
    merged = postprocess(feats, FreeMaskParams(refine=False, split_components=False)).instances
    split = postprocess(feats, FreeMaskParams(refine=False, split_components=True, top_k=30)).instances
    two_part = [m for m in merged if m.area > 0 and len(__import__("engine.io.masks", fromlist=["x"]).split_components(m.mask)) >= 2]
    assert two_part, "expected a mask covering both objects when not splitting"
    from engine.io.masks import split_components

    assert all(len(split_components(m.mask)) == 1 for m in split)


def test_params_validation_names_the_field():
    with pytest.raises(ValueError, match="tau"):
        FreeMaskParams(tau=1.5).validated()
    with pytest.raises(ValueError, match="scales"):
        FreeMaskParams(scales=()).validated()
    with pytest.raises(ValueError, match="nms_kernel"):
        FreeMaskParams(nms_kernel="box").validated()


def test_upsample_crop_equals_full_interpolation():
    soft = torch.rand(6, 9)
    full = F.interpolate(soft[None, None], size=(48, 72), mode="bilinear", align_corners=False)[0, 0]
    crop = upsample_crop(soft, (48, 72), (5, 30, 10, 70))
    assert torch.allclose(crop, full[5:30, 10:70], atol=1e-5)


def test_refinement_uses_the_image_and_soft_mask_on_demand(photo_features, photo_sample):
    image, _ = photo_sample
    plain = postprocess(photo_features, FreeMaskParams(refine=False), image)
    refined = postprocess(photo_features, FreeMaskParams(refine=True), image)
    assert refined.instances and plain.instances
    assert refined.refine_radius >= 2
    # refined masks follow image edges, so they differ from the blocky upsampled ones
    assert not all(np.array_equal(a.mask, b.mask) for a, b in zip(plain.instances, refined.instances))
    soft = refined.soft_mask(0)
    assert soft.shape == image.shape[:2] and 0.0 <= soft.min() and soft.max() <= 1.0
    sim = query_similarity(photo_features, 10, 10)
    assert sim.shape == photo_features.grid_size and sim.max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="features were computed"):
        postprocess(photo_features, FreeMaskParams(), image[:50])


def test_postprocess_never_runs_the_backbone(extractor, photo_sample):
    image, _ = photo_sample
    feats = extractor.extract(image)
    calls = extractor.backbone_calls
    for tau in (0.3, 0.5, 0.7):
        postprocess(feats, FreeMaskParams(tau=tau, scales=(1.0, 0.5)), image)
    assert extractor.backbone_calls == calls


def test_background_candidates_are_dropped_on_the_key_grid():
    from engine.freemask.candidates import Candidates, drop_background_candidates

    grid = (10, 10)
    full = torch.ones(10, 10, dtype=torch.bool)  # touches all four sides
    corner = torch.zeros(10, 10, dtype=torch.bool)
    corner[:4, :4] = True  # touches two sides
    inner = torch.zeros(10, 10, dtype=torch.bool)
    inner[4:6, 4:6] = True
    cands = Candidates(torch.arange(3), torch.stack([full, corner, inner]).reshape(3, -1), torch.ones(3))
    kept = drop_background_candidates(cands, grid, FreeMaskParams(max_border_sides=2))
    assert kept.query.tolist() == [1, 2]
    kept = drop_background_candidates(cands, grid, FreeMaskParams(max_border_sides=0))
    assert kept.query.tolist() == [2]
    kept = drop_background_candidates(cands, grid, FreeMaskParams(max_area_frac=0.1))
    assert kept.query.tolist() == [2]


def test_split_mode_finds_every_copy_of_a_repeated_object():
    """Many identical objects (nuclei): one query lights all of them; splitting yields each one."""
    h, w = 48, 64
    keys = torch.zeros(2, h, w)
    keys[0] = 1.0
    truth = np.zeros((h, w), np.int32)
    k = 0
    for y in range(6, 42, 12):
        for x in range(6, 58, 12):
            k += 1
            keys[:, y:y + 5, x:x + 5] = torch.tensor([0.0, 1.0])[:, None, None]
            truth[y:y + 5, x:x + 5] = k
    keys = F.normalize(keys + 0.01 * torch.randn(2, h, w, generator=torch.Generator().manual_seed(1)), dim=0)
    feats = Features(keys=keys, image_size=(h * 8, w * 8), input_size=(h * 8, w * 8), input_scale=1.0,
                     auto_scale=False, object_size=None, config=FeatureConfig())
    big = np.kron(truth, np.ones((8, 8), np.int32))
    res = postprocess(feats, FreeMaskParams(refine=False, split_components=True, top_k=50, max_border_sides=2))
    found = sum(any(_iou(m.mask, big == j) > 0.5 for m in res.instances) for j in range(1, k + 1))
    assert found == k, f"found {found} of {k} objects"
    merged = postprocess(feats, FreeMaskParams(refine=False, split_components=False, top_k=50))
    assert sum(any(_iou(m.mask, big == j) > 0.5 for m in merged.instances) for j in range(1, k + 1)) < k


def test_auto_top_k_follows_the_automatic_input_scale():
    from dataclasses import replace as dc_replace

    from engine.freemask.postprocess import auto_top_k

    feats, _ = toy_features()
    assert auto_top_k(feats) == 20
    upscaled = dc_replace(feats, auto_scale=True, input_scale=2.5)
    assert auto_top_k(upscaled) == 100
    assert auto_top_k(dc_replace(feats, auto_scale=False, input_scale=2.5)) == 20  # user's own scale
    res = postprocess(upscaled, FreeMaskParams(refine=False))
    assert res.top_k == 100


def test_score_stride_16_ranks_on_pooled_keys_but_returns_fine_masks():
    feats, truth = toy_features()
    coarse = postprocess(feats, FreeMaskParams(refine=False, score_stride=16))
    fine = postprocess(feats, FreeMaskParams(refine=False, score_stride=8))
    big = np.kron(truth, np.ones((8, 8), np.int32))
    for res in (coarse, fine):
        for k in (1, 2, 3):
            assert max(_iou(m.mask, big == k) for m in res.instances) > 0.8
    with pytest.raises(ValueError, match="score_stride"):
        FreeMaskParams(score_stride=12).validated()


def test_distinct_queries_drops_near_copies_keeps_distinct_ones():
    from engine.freemask.queries import Queries, distinct_queries

    v = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.7, 0.7]]), dim=1)
    q = Queries(v, torch.ones(4), torch.zeros(4, 2))
    kept = distinct_queries(q, max_cos=0.95)
    assert kept.vectors.shape[0] == 3
    assert torch.allclose(kept.vectors[0], v[0]) and torch.allclose(kept.vectors[1], v[2])


def test_tau_change_reuses_the_ranked_soft_masks(photo_features, photo_sample):
    """Queries and their ranking-grid soft masks depend on features and scales only."""
    from engine.freemask.soft_masks import ranked_soft_masks

    image = photo_sample[0]
    photo_features.memo.clear()
    postprocess(photo_features, FreeMaskParams(tau=0.6), image)
    first = ranked_soft_masks(photo_features, FreeMaskParams(tau=0.6))
    postprocess(photo_features, FreeMaskParams(tau=0.75), image)
    assert ranked_soft_masks(photo_features, FreeMaskParams(tau=0.75))[1] is first[1]
    other = ranked_soft_masks(photo_features, FreeMaskParams(scales=(1.0,)))
    assert other[1].shape[0] < first[1].shape[0]  # a new pyramid is computed, not the memo
    assert len([k for k in photo_features.memo if isinstance(k, tuple) and k[0] == "ranked"]) == 1


def test_instances_carry_a_box_that_holds_the_whole_mask(photo_features, photo_sample):
    """Masks are held as crops in their box: the box must never cut a mask, and it is tight."""
    image, _ = photo_sample
    for refine in (False, True):
        for inst in postprocess(photo_features, FreeMaskParams(refine=refine), image).instances:
            y0, y1, x0, x1 = inst.box
            outside = inst.mask.copy()
            outside[y0:y1, x0:x1] = False
            assert not outside.any() and inst.area == int(inst.mask.sum()) > 0
            assert inst.crop[0].any() and inst.crop[-1].any() and inst.crop[:, 0].any() and inst.crop[:, -1].any()


def test_refining_masks_on_threads_gives_the_one_thread_result(photo_features, photo_sample):
    """Masks refined a few at a time give exactly the one-by-one result, also when filters drop
    candidates and later ones must take their place."""
    image, _ = photo_sample
    for params in (FreeMaskParams(), FreeMaskParams(min_area=400, top_k=5)):
        one = postprocess(photo_features, params, image, threads=1)
        many = postprocess(photo_features, params, image, threads=3)
        assert len(one.instances) == len(many.instances) > 0
        for a, b in zip(one.instances, many.instances):
            assert np.array_equal(a.mask, b.mask) and a.score == b.score and a.box == b.box
