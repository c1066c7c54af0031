"""The automatic choices of a run, read back from what the engine used (``engine/generators/choices.py``)."""

from __future__ import annotations

import torch

from engine.freemask.features import FeatureConfig, Features
from engine.freemask.postprocess import FreeMaskParams, postprocess
from engine.freemask.queries import build_queries, query_grid
from engine.generators.choices import automatic_choices
from engine.generators.tiling import plan_tiles


def _features(grid=(40, 50), scale=1.0, auto=False, stain="none", config=FeatureConfig(stain="none")) -> Features:
    h, w = grid
    return Features(keys=torch.nn.functional.normalize(torch.rand(8, h, w), dim=0), image_size=(h * 8, w * 8),
                    input_size=(h * 8, w * 8), input_scale=scale, auto_scale=auto, object_size=30.0 if auto else None,
                    stain=stain, config=config)


def test_query_grid_is_the_grid_the_queries_are_pooled_on():
    keys = torch.nn.functional.normalize(torch.rand(8, 40, 52), dim=0)
    for stride in (32, 16, None):
        rows, cols = query_grid((40, 52), stride)
        assert build_queries(keys, (1.0,), stride).vectors.shape[0] == rows * cols
    assert query_grid((40, 52), 32) == (10, 13) and query_grid((40, 52), None) == (16, 21)


def test_choices_of_a_real_run_are_what_its_features_and_result_say(photo_sample, photo_features):
    image = photo_sample[0]
    params = FreeMaskParams()
    result = postprocess(photo_features, params, image)
    c = automatic_choices(photo_features, params, result)
    assert (c.input_scale, c.scale_auto, c.stain, c.stain_auto) == (
        photo_features.input_scale, True, photo_features.stain, True)
    assert c.query_grid == query_grid(photo_features.grid_size, 32) and c.tiles is None
    assert (c.top_k, c.refine_radius) == (result.top_k, result.refine_radius)
    text = c.text()
    stain = {"he": "hematoxylin", "none": "none"}[photo_features.stain]
    assert text.startswith("used: ") and f"input scale ×{photo_features.input_scale:.2f} (auto" in text
    assert f"stain: {stain} (auto)" in text and "tiles: none" in text and f"top-k {result.top_k} (auto)" in text


def test_values_that_were_set_are_not_called_automatic():
    feats = _features(scale=1.5)
    params = FreeMaskParams(top_k=7, refine_radius=5, query_stride=None)
    c = automatic_choices(feats, params, postprocess(feats, params))
    text = c.text()
    assert "input scale ×1.50 ·" in text and "stain: none ·" in text
    assert "query grid 16×20 (auto)" in text  # sized to the image: 16 cells on the short side
    assert "top-k" not in text and "refine radius" not in text  # both were set


def test_a_tiled_run_reports_its_window_grid():
    feats = _features(auto=True, stain="he", config=FeatureConfig(stain="auto"))
    plan = plan_tiles((600, 900), 2.0, 256, 32, "he")
    c = automatic_choices(feats, FreeMaskParams(), plan=plan)
    rows, cols = c.tiles
    assert rows * cols == len(plan.windows) and rows > 1 and cols > 1
    assert f"tiles: {rows}×{cols}" in c.text() and "stain: hematoxylin (auto)" in c.text()
    assert "objects ≈30 px" in c.text()
    single = plan_tiles((100, 100), 1.0, 256, 32)
    assert automatic_choices(feats, FreeMaskParams(), plan=single).tiles is None


def test_classical_added_on_microscopy_is_an_automatic_choice(extractor):
    from engine.data.synthetic import make_sample
    from engine.generators.merge import GeneratorConfig, generate

    nuclei, _ = make_sample(5, (128, 128), kind="microscopy")
    feats = extractor.extract(nuclei)
    params = FreeMaskParams()
    auto = automatic_choices(feats, params, generate(feats, params, nuclei))
    assert auto.auto_generators == ("classical",) and "+ classical (auto: microscopy)" in auto.text()
    off = generate(feats, params, nuclei, GeneratorConfig(classical_on_microscopy=False))
    assert "classical" not in automatic_choices(feats, params, off).text()
