"""Tiling: overlapping windows at the full input scale, one core per pixel, masks merged in image coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from engine.cli import main
from engine.data.synthetic import write_synthetic_dataset
from engine.generators.pipeline import run_freemask_batch
from engine.freemask.postprocess import FreeMaskParams
from engine.generators.choices import AutoChoices, automatic_choices, tile_grid
from engine.generators.merge import GeneratorConfig, generate
from engine.generators.tiling import core_instances, extract_tiles, plan_image, plan_tiles, postprocess_tiles
from engine.freemask.features import FeatureCache
from engine.io.images import file_sha1, load_image
from engine.io.stacks import content_key
from engine.io.coco import load_image_results


@pytest.mark.parametrize(("size", "scale", "tile", "overlap"), [((900, 700), 1.5, 512, 64), ((300, 2000), 1.0, 256, 32),
                                                               ((100, 100), 2.0, 512, 64)])
def test_cores_cover_every_pixel_once_and_windows_fit(size, scale, tile, overlap):
    plan = plan_tiles(size, scale, tile, overlap)
    cover = np.zeros(size, int)
    for (y0, y1, x0, x1), (cy0, cy1, cx0, cx1) in zip(plan.windows, plan.cores):
        assert 0 <= y0 < y1 <= size[0] and 0 <= x0 < x1 <= size[1]
        assert y0 <= cy0 < cy1 <= y1 and x0 <= cx0 < cx1 <= x1
        assert (y1 - y0) <= round(tile / scale) and (x1 - x0) <= round(tile / scale)
        cover[cy0:cy1, cx0:cx1] += 1
    assert (cover == 1).all()
    with pytest.raises(ValueError, match="tile"):
        plan_tiles(size, scale, 32, 8)


def test_a_tiled_run_gives_full_resolution_masks_and_caches_each_window(tmp_path, capsys, extractor):
    images, _gt = write_synthetic_dataset(tmp_path / "d", 1, seed=3, size=(400, 400), kind="microscopy")
    report = run_freemask_batch([images], device="cpu", cache_dir=tmp_path / "cache", tile=256, tile_overlap=32,
                                feature_config=None)
    [result] = report.results
    assert result.instances and all(m.mask.shape == (400, 400) and m.area > 0 for m in result.instances)
    ys = [np.nonzero(m.mask)[0].mean() for m in result.instances]
    assert min(ys) < 200 < max(ys)  # masks from more than one window, placed in image coordinates
    boxes = [m.box for m in result.instances]
    assert all(m.mask[b[0]:b[1], b[2]:b[3]].sum() == m.area for m, b in zip(result.instances, boxes))
    again = run_freemask_batch([images], device="cpu", cache_dir=tmp_path / "cache", tile=256, tile_overlap=32)
    assert again.cache_hits == 1 and again.backbone_seconds == 0.0  # every window came from the cache
    out = tmp_path / "m.json"
    capsys.readouterr()
    assert main(["freemask", str(images), "--out", str(out), "--tile", "256", "--tile-overlap", "32", "--device", "cpu",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    [loaded] = load_image_results(out).values()
    assert len(loaded.instances) == len(result.instances)

    # what the CLI prints and stores is what the engine says of the same windows
    path = report.images[result.file_name]
    image = load_image(path)
    plan = plan_image(image, extractor.config, 256, 32)
    digest = content_key(file_sha1(path), result.file_name, None)
    tiled, hits = extract_tiles(extractor, image, plan, digest, FeatureCache(tmp_path / "cache"))
    assert hits == len(plan.windows)  # the windows the CLI ran
    params = FreeMaskParams()
    expected = automatic_choices(tiled.windows[0], params, postprocess_tiles(tiled, image, params, GeneratorConfig()),
                                 plan)
    assert expected.tiles == tile_grid(plan) and expected.tiles[0] * expected.tiles[1] > 1
    assert expected.scale_auto and expected.input_scale == plan.scale > 1.0  # the whole image's automatic scale
    assert AutoChoices.from_dict(loaded.automatic) == expected == AutoChoices.from_dict(result.automatic)
    assert f"{result.file_name}: {expected.text()}" in capsys.readouterr().out


def test_a_tiling_the_engine_cannot_plan_is_one_usage_error_before_any_image(tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["freemask", str(tmp_path), "--out", str(out), "--tile", "256", "--tile-overlap", "128"]) == 2
    assert "overlap in [0, tile/2)" in capsys.readouterr().err and not out.exists()


def test_a_set_top_k_caps_the_whole_tiled_image_not_each_window(tmp_path, extractor):
    images, _gt = write_synthetic_dataset(tmp_path / "d", 1, seed=5, size=(400, 400), kind="microscopy")
    [path] = sorted(images.iterdir())
    image = load_image(path)
    plan = plan_image(image, extractor.config, 256, 32)
    assert plan is not None and len(plan.windows) > 1
    tiled, _hits = extract_tiles(extractor, image, plan, None, None)
    params = FreeMaskParams(top_k=3)
    per_window = [generate(f, params, np.ascontiguousarray(image[y0:y1, x0:x1]), GeneratorConfig()).instances
                  for f, (y0, y1, x0, x1) in zip(tiled.windows, plan.windows)]
    assert len(core_instances(per_window, plan, image.shape[:2])) > 3  # the windows together hold more
    result = postprocess_tiles(tiled, image, params, GeneratorConfig())
    assert 0 < len(result.instances) <= 3
    scores = [m.score for m in result.instances]
    assert scores == sorted(scores, reverse=True)
