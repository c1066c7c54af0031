"""Generators beside Free Mask (MaskCut, classical proposals) and the merge into one ranking."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi
import torch

from engine.cli import main
from engine.data.synthetic import write_synthetic_dataset
from engine.freemask.postprocess import FreeMaskParams, postprocess
from engine.generators import merge as merge_mod
from engine.generators.maskcut import MaskCutParams, maskcut_ranked
from engine.generators.classical import otsu_watershed, ring_contrast
from engine.generators.merge import GeneratorConfig, feature_contrast, generate, image_contrast, merge, merge_scores, parse_generators
from engine.ops.masks import crop_iou_matrix
from engine.structures import InstanceMask
from engine.ops.nms import mask_iou_matrix, matrix_nms, matrix_nms_from_iou
from engine.structures import InstanceMask


def _blocks_image(size: int = 160) -> tuple[np.ndarray, list[np.ndarray]]:
    """Three flat-coloured squares on a grey textured background, with their masks."""
    rng = np.random.default_rng(0)
    img = (120 + rng.normal(0, 6, (size, size, 3))).clip(0, 255).astype(np.uint8)
    masks = []
    for (y, x, c) in [(20, 20, (220, 40, 40)), (90, 30, (40, 200, 60)), (40, 100, (40, 60, 220))]:
        m = np.zeros((size, size), bool)
        m[y: y + 44, x: x + 44] = True
        img[m] = c
        masks.append(m)
    return img, masks


@pytest.fixture(scope="module")
def blocks(extractor):
    image, masks = _blocks_image()
    return image, masks, extractor.extract(image)


def test_nms_from_an_iou_matrix_equals_nms_from_masks():
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(12, 30, 30, generator=g) > 0.6
    scores = torch.rand(12, generator=g)
    for kernel in ("gaussian", "linear"):
        a = matrix_nms(masks.float(), scores, kernel=kernel)
        b = matrix_nms_from_iou(mask_iou_matrix(masks), scores, kernel=kernel)
        torch.testing.assert_close(a, b)


def test_crop_iou_equals_full_size_iou():
    rng = np.random.default_rng(3)
    full, crops, boxes = [], [], []
    for _ in range(6):
        y0, x0 = rng.integers(0, 30, 2)
        y1, x1 = y0 + rng.integers(1, 20), x0 + rng.integers(1, 20)
        m = np.zeros((50, 50), bool)
        m[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) > 0.3
        full.append(m)
        crops.append(m[y0:y1, x0:x1])
        boxes.append((int(y0), int(y1), int(x0), int(x1)))
    expected = mask_iou_matrix(torch.from_numpy(np.stack(full))).fill_diagonal_(0)
    torch.testing.assert_close(crop_iou_matrix(crops, boxes), expected)


def test_maskcut_cuts_out_objects(blocks):
    image, masks, feats = blocks
    ranked = maskcut_ranked(feats, FreeMaskParams(), MaskCutParams(n_masks=3))
    assert 1 <= len(ranked.order) <= 3
    found = generate(feats, FreeMaskParams(), image, GeneratorConfig(generators=("maskcut",))).instances
    assert found and all(m.source == "maskcut" for m in found)
    best = max(float((f.mask & t).sum() / (f.mask | t).sum()) for f in found for t in masks)
    assert best > 0.5  # at least one square is cut out whole


def test_freemask_alone_is_exactly_postprocess(blocks):
    image, _masks, feats = blocks
    a = postprocess(feats, FreeMaskParams(), image).instances
    b = generate(feats, FreeMaskParams(), image, GeneratorConfig()).instances
    assert [m.score for m in a] == [m.score for m in b]
    assert all((x.mask == y.mask).all() for x, y in zip(a, b))


def test_merge_ranks_every_source_once_and_reuses_work_across_tau(blocks, monkeypatch):
    image, _masks, feats = blocks
    calls = {"maskcut": 0}
    real = merge_mod.maskcut_ranked

    def counting(*args, **kwargs):
        calls["maskcut"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(merge_mod, "maskcut_ranked", counting)
    feats.memo.clear()
    config = GeneratorConfig(generators=("freemask", "maskcut", "classical"))
    for tau in (0.6, 0.7):
        result = generate(feats, FreeMaskParams(tau=tau, top_k=15), image, config)
        scores = [m.score for m in result.instances]
        assert len(scores) <= 15 and scores == sorted(scores, reverse=True)
        assert {m.source for m in result.instances} <= {"freemask", "maskcut", "classical"}
    assert calls["maskcut"] == 1  # the cut depends on the features only: a τ move reuses it
    assert {kind for kind, _key in feats.memo} >= {"maskcut", "classical", "ranked"}


def test_feature_contrast_prefers_whole_objects_to_fragments(blocks):
    _image, masks, feats = blocks
    whole = masks[0]
    fragment = np.zeros_like(whole)
    fragment[110:150, 110:150] = True  # a patch of the textured background
    scores = feature_contrast(feats, [InstanceMask(whole, 1.0), InstanceMask(fragment, 1.0)])
    assert float(scores[0]) > float(scores[1])


def test_ring_contrast_of_a_crop_equals_that_of_the_full_mask():
    rng = np.random.default_rng(3)
    feat = rng.random((60, 70, 2))
    mask = np.zeros((60, 70), bool)
    mask[0:12, 40:61] = True  # touches the top border: the ring is clipped there
    mask[5, 39] = True
    crop = mask[0:12, 39:61]
    assert ring_contrast(feat, crop, (0, 12, 39, 61), 3) == pytest.approx(ring_contrast(feat, mask, (0, 60, 0, 70), 3))
    inside, ring = mask, ndi.binary_dilation(ndi.binary_dilation(mask, iterations=2), iterations=3)
    ring &= ~ndi.binary_dilation(mask, iterations=2)
    expected = np.linalg.norm(feat[inside].mean(0) - feat[ring].mean(0))
    assert ring_contrast(feat, crop, (0, 12, 39, 61), 3) == pytest.approx(expected)
    assert ring_contrast(feat, np.ones((60, 70), bool), (0, 60, 0, 70), 3) == 0.0  # no ring around the image


def test_image_contrast_ranks_objects_above_background_and_is_bounded(blocks):
    image, masks, feats = blocks
    fragment = np.zeros_like(masks[0])
    fragment[110:150, 110:150] = True
    instances = [InstanceMask(m, score=1.0) for m in (masks[0], fragment)]
    grey = image_contrast(feats, image, instances)
    assert 0.0 <= float(grey.min()) and float(grey.max()) <= 1.0
    assert float(grey[0]) > 0.3 > float(grey[1])
    both = merge_scores(feats, instances, image, "both")
    features = merge_scores(feats, instances, image, "features")
    assert torch.allclose(both, 0.5 * (grey + features))
    assert torch.equal(merge_scores(feats, instances, None, "both"), features)  # no image: features
    assert any(kind == "grey" for kind, _key in feats.memo)  # the grey view is kept for the next slider move


def test_merge_score_is_checked_and_classical_proposals_get_room(blocks):
    image, _masks, feats = blocks
    with pytest.raises(ValueError, match="merge score"):
        GeneratorConfig(score="loudness").validated()
    config = GeneratorConfig(generators=("classical",), classical=("watershed",), score="image")
    result = generate(feats, FreeMaskParams(), image, config)
    assert result.top_k >= 20 and {m.source for m in result.instances} == {"classical"}
    own = otsu_watershed(image)  # alone through the merge, the method's masks come out unchanged
    assert sorted(m.area for m in result.instances) == sorted(m.area for m in own) and len(own) >= 2


def test_generator_names_are_checked():
    assert parse_generators("freemask, maskcut,freemask") == ("freemask", "maskcut")
    with pytest.raises(ValueError, match="unknown|some of"):
        parse_generators("freemask,sam")


def test_cli_generators_option(tmp_path, capsys):
    images, _gt = write_synthetic_dataset(tmp_path / "d", 2, seed=2, size=(128, 128), kind="microscopy")
    out = tmp_path / "m.json"
    code = main(["freemask", str(images), "--out", str(out), "--generators", "freemask,classical", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    sources = {a["source"] for a in json.loads(out.read_text())["annotations"]}
    assert sources and sources <= {"freemask", "classical"}
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["freemask", str(images), "--out", str(tmp_path / "x.json"), "--generators", "magic"])
    assert "magic" in capsys.readouterr().err


def test_classical_proposals_join_on_microscopy_only(extractor):
    from engine.data.synthetic import make_sample

    nuclei, _ = make_sample(3, (160, 160), kind="microscopy")
    feats = extractor.extract(nuclei)
    result = generate(feats, FreeMaskParams(), nuclei)
    assert result.generators == ("freemask", "classical") and result.auto_generators == ("classical",)
    assert {m.source for m in result.instances} <= {"freemask", "classical"}
    alone = generate(feats, FreeMaskParams(), nuclei, GeneratorConfig(classical_on_microscopy=False))
    assert alone.generators == ("freemask",) and alone.auto_generators == ()
    assert [m.score for m in alone.instances] == [m.score for m in postprocess(feats, FreeMaskParams(), nuclei).instances]
    photo, _masks = _blocks_image()
    assert generate(extractor.extract(photo), FreeMaskParams(), photo).auto_generators == ()


def test_classical_methods_follow_the_image_kind_unless_named(extractor):
    from engine.data.synthetic import make_sample
    from engine.generators.merge import classical_methods, parse_classical

    nuclei, _ = make_sample(3, (160, 160), kind="microscopy")
    photo, _masks = _blocks_image()
    auto = GeneratorConfig()
    assert classical_methods(auto, nuclei, "none") == ("watershed", "local_watershed")
    assert classical_methods(auto, photo, "none") == ("watershed", "felzenszwalb")
    named = GeneratorConfig(classical=("felzenszwalb",))
    assert classical_methods(named, nuclei, "none") == ("felzenszwalb",)
    feats = extractor.extract(nuclei)
    methods = {m.extra["method"] for m in generate(feats, FreeMaskParams(), nuclei).instances if m.source == "classical"}
    assert "local_watershed" in methods and "felzenszwalb" not in methods

    def merged(image, features, weight):
        config = GeneratorConfig(generators=("freemask", "classical"), freemask_weight=weight)
        return [(m.source, m.score) for m in generate(features, FreeMaskParams(), image, config).instances]

    assert merged(nuclei, feats, 0.5) != merged(nuclei, feats, 1.0)  # on microscopy the weight applies
    photo_feats = extractor.extract(photo)
    assert merged(photo, photo_feats, 0.5) == merged(photo, photo_feats, 1.0)  # on other images it does not
    assert parse_classical("auto") is None and parse_classical("local_watershed, watershed") == ("local_watershed", "watershed")
    with pytest.raises(ValueError, match="some of"):
        parse_classical("otsu,magic")


def test_freemask_weight_scales_freemask_scores_only_beside_classical(blocks):
    image, masks, feats = blocks
    fm = [InstanceMask(masks[0], score=1.0, source="freemask"), InstanceMask(masks[1], score=1.0, source="freemask")]
    cl = InstanceMask(masks[2], score=1.0, source="classical")
    p = FreeMaskParams()

    def scores(instances, weight):
        return {(m.source, m.area, m.box): m.score for m in merge(feats, instances, p, 10, image, "both", weight)}

    full, half = scores(fm + [cl], 1.0), scores(fm + [cl], 0.5)
    for key, value in full.items():  # the masks do not overlap: no NMS decay, so the weight shows as it is
        assert half[key] == pytest.approx(value * (0.5 if key[0] == "freemask" else 1.0), rel=1e-5)
    assert scores(fm, 0.5) == scores(fm, 1.0)  # no classical proposals: Free Mask's scores are left alone
    with pytest.raises(ValueError, match="weight"):
        GeneratorConfig(freemask_weight=0.0).validated()


def test_cli_classical_and_weight_options(tmp_path, capsys):
    from engine.cli.common import add_freemask_options, generator_config_from_args
    import argparse

    parser = argparse.ArgumentParser()
    add_freemask_options(parser)
    args = parser.parse_args(["--classical", "felzenszwalb", "--freemask-weight", "0.25"])
    config = generator_config_from_args(args)
    assert config.classical == ("felzenszwalb",) and config.freemask_weight == 0.25
    assert generator_config_from_args(parser.parse_args([])) == GeneratorConfig()
    for bad in (["--classical", "magic"], ["--freemask-weight", "2"], ["--freemask-weight", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    assert "freemask-weight" in capsys.readouterr().err
