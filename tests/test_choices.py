"""The automatic choices of a run, read back from what the engine used (``engine/generators/choices.py``)."""

from __future__ import annotations

import json

import torch

from engine.freemask.features import FeatureConfig, Features
from engine.freemask.postprocess import FreeMaskParams, postprocess
from engine.freemask.queries import build_queries, query_grid
from engine.generators.choices import AutoChoices, automatic_choices
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


def test_a_tiled_run_reports_its_window_grid_and_the_whole_images_choices():
    # a window's features carry the fixed scale and stain it was given; the plan says how they were chosen
    feats = _features(scale=2.0, stain="he", config=FeatureConfig(stain="he", input_scale=2.0))
    plan = plan_tiles((600, 900), 2.0, 256, 32, "he", auto_scale=True, object_size=30.0, stain_auto=True)
    c = automatic_choices(feats, FreeMaskParams(), plan=plan)
    rows, cols = c.tiles
    assert rows * cols == len(plan.windows) and rows > 1 and cols > 1
    assert f"tiles: {rows}×{cols}" in c.text() and "stain: hematoxylin (auto)" in c.text()
    assert "input scale ×2.00 (auto, objects ≈30 px)" in c.text()
    result = postprocess(feats, FreeMaskParams(top_k=None))
    assert f"top-k {result.top_k} per window (auto)" in automatic_choices(feats, FreeMaskParams(), result, plan).text()
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
    # 'auto' classical methods resolve by image kind, and Free Mask's merge weight applies on microscopy
    assert auto.classical_methods == ("watershed", "local_watershed") and auto.freemask_weight == 0.5
    assert "classical: watershed, local_watershed (auto)" in auto.text()
    assert "Free Mask weight ×0.5 (microscopy)" in auto.text()
    chosen = generate(feats, params, nuclei, GeneratorConfig(classical=("felzenszwalb",), freemask_weight=0.8))
    c = automatic_choices(feats, params, chosen)
    assert c.classical_methods == () and "classical:" not in c.text() and "Free Mask weight ×0.8" in c.text()
    assert {m.extra["method"] for m in chosen.instances if m.source == "classical"} <= {"felzenszwalb"}
    alone = generate(feats, params, nuclei, GeneratorConfig(generators=("classical",)))
    assert automatic_choices(feats, params, alone).freemask_weight is None  # no Free Mask masks to weigh


def test_classical_methods_on_a_photo_are_the_colour_ones(photo_sample, photo_features):
    from engine.generators.merge import COLOUR_CLASSICAL, GeneratorConfig, generate

    params = FreeMaskParams()
    result = generate(photo_features, params, photo_sample[0], GeneratorConfig(generators=("freemask", "classical")))
    c = automatic_choices(photo_features, params, result)
    assert c.classical_methods == COLOUR_CLASSICAL and c.freemask_weight is None  # the weight is for microscopy
    assert f"classical: {', '.join(COLOUR_CLASSICAL)} (auto)" in c.text() and "weight" not in c.text()


def _cli_args(*argv):
    from engine.cli import build_parser

    return build_parser().parse_args(["freemask", "in", "--out", "out.json", *argv])


def test_the_cli_prints_and_stores_what_automatic_choices_computes(tmp_path, capsys, extractor):
    """One line per image on stdout and an ``automatic`` dict in its COCO images entry, both what the
    engine's ``automatic_choices`` says of the same image, features and parameters."""
    from pycocotools.coco import COCO

    from engine.cli import main
    from engine.cli.common import feature_config_from_args, generator_config_from_args, params_from_args
    from engine.data.synthetic import write_synthetic_dataset
    from engine.generators.choices import AutoChoices
    from engine.generators.merge import generate
    from engine.io.images import list_images, load_image

    images, _gt = write_synthetic_dataset(tmp_path / "d", 1, seed=4, size=(160, 160), kind="microscopy")
    out = tmp_path / "m.json"
    assert main(["freemask", str(images), "--out", str(out), "--device", "cpu", "--no-cache"]) == 0
    printed = capsys.readouterr().out
    [entry] = json.loads(out.read_text())["images"]

    args = _cli_args()
    assert extractor.config == feature_config_from_args(args)  # the CLI's defaults: the same features
    [path], _ = list_images([images])
    image = load_image(path)
    feats = extractor.extract(image)
    params = params_from_args(args)
    expected = automatic_choices(feats, params, generate(feats, params, image, generator_config_from_args(args)))
    assert entry["automatic"] == json.loads(json.dumps(expected.as_dict()))
    assert AutoChoices.from_dict(entry["automatic"]) == expected
    assert f"{entry['file_name']}: {expected.text()}\n" in printed
    assert expected.auto_generators == ("classical",) and "(auto: microscopy)" in printed
    assert COCO(str(out)).imgs[entry["id"]]["automatic"] == entry["automatic"]  # pycocotools reads the file

    quiet = tmp_path / "q.json"
    assert main(["freemask", str(images), "--out", str(quiet), "--device", "cpu", "--no-cache", "--quiet"]) == 0
    assert "used: " not in capsys.readouterr().out
    assert json.loads(quiet.read_text())["images"][0]["automatic"] == entry["automatic"]


def test_choices_survive_the_coco_round_trip(tmp_path):
    from engine.io.coco import build_coco_dataset, load_image_results, write_coco
    from engine.structures import ImageResult

    choices = automatic_choices(_features(auto=True), FreeMaskParams(),
                                plan=plan_tiles((600, 900), 2.0, 256, 32, auto_scale=True, object_size=12.5))
    results = [ImageResult("a.png", 64, 64, automatic=choices.as_dict()), ImageResult("gt.png", 64, 64)]
    write_coco(tmp_path / "c.json", build_coco_dataset(results))
    loaded = load_image_results(tmp_path / "c.json")
    assert AutoChoices.from_dict(loaded["a.png"].automatic) == choices and loaded["gt.png"].automatic is None
    assert "automatic" not in json.loads((tmp_path / "c.json").read_text())["images"][1]
