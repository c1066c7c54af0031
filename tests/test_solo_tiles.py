"""The student at its objects' scale: the run's scale, training windows, tiled prediction."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.io.coco import build_coco_dataset, write_coco
from engine.solo import tiles
from engine.solo.config import InferenceConfig
from engine.solo.data import load_training_set
from engine.structures import IGNORE_KEY, ImageResult, InstanceMask


def _disc(shape, cy, cx, r):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_the_scale_makes_the_median_mask_object_px_wide():
    masks = [InstanceMask(_disc((200, 200), 50, 50, r), 1.0) for r in (5, 10, 20)]
    side = np.sqrt(masks[1].area)
    assert tiles.folder_scale(masks, 40) == pytest.approx(40 / side)
    assert tiles.folder_scale(masks, 0) == 0.0 and tiles.folder_scale([], 40) == 0.0


def test_an_image_that_fits_at_the_scale_is_not_cut():
    assert tiles.windows((300, 200), 1.0, 320) is None
    assert tiles.windows((300, 200), 0.0, 320) is None
    plan = tiles.windows((300, 200), 2.0, 320)
    assert plan is not None and len(plan.windows) > 1
    covered = np.zeros((300, 200), int)
    for y0, y1, x0, x1 in plan.cores:
        covered[y0:y1, x0:x1] += 1
    assert (covered == 1).all()  # the cores partition the image
    assert all(max(y1 - y0, x1 - x0) == 160 for y0, y1, x0, x1 in plan.windows)  # 320 network px at ×2


def test_a_mask_cut_by_a_window_is_a_positive_only_when_most_of_it_is_inside():
    shape = (100, 100)
    masks = [InstanceMask(_disc(shape, 50, 20, 8), 1.0),  # whole inside x < 40
             InstanceMask(_disc(shape, 50, 37, 8), 1.0),  # centre inside: more than half
             InstanceMask(_disc(shape, 50, 45, 8), 1.0),  # centre outside: less than half
             InstanceMask(_disc(shape, 50, 80, 8), 1.0)]  # outside
    inside, cut = tiles.split_masks(masks, (0, 100, 0, 40))
    assert [k for k, _m in inside] == [0, 1]
    assert len(cut) == 1 and cut[0].shape == (100, 40)
    assert inside[0][1].sum() == masks[0].area


def test_training_windows_hold_every_object_whole_somewhere(tmp_path):
    shape = (240, 240)
    rng = np.random.default_rng(0)
    image = np.full((*shape, 3), 30, np.uint8)
    masks = []
    for cy in range(20, 240, 40):
        for cx in range(20, 240, 40):
            m = _disc(shape, cy, cx, 9)
            image[m] = 200
            masks.append(InstanceMask(m, 1.0))
    image = np.clip(image + rng.integers(0, 20, image.shape), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    extra = InstanceMask(_disc(shape, 120, 120, 3), 0.2, extra={IGNORE_KEY: 1})
    write_coco(tmp_path / "m.json", build_coco_dataset([ImageResult("a.png", *shape, [*masks, extra])]))
    scale = tiles.folder_scale(masks, 32)  # objects ~16 px -> ×2: a 480 px input, cut into 128 px windows
    samples, problems = load_training_set(tmp_path, tmp_path / "m.json", 128, scale=scale)
    assert not problems and len(samples) > 4
    assert all(s.image.shape == (3, 128, 128) for s in samples)
    # every object is a positive of some window at about the scale's size (area × scale²)
    areas = sorted(int(m.sum()) for s in samples for m in s.masks)
    assert len(areas) >= len(masks) and min(areas) > 0.5 * masks[0].area * scale**2
    assert any(s.ignore is not None for s in samples)  # the ignore region, and the objects cut by edges
    whole, _ = load_training_set(tmp_path, tmp_path / "m.json", 128)
    assert len(whole) == 1 and whole[0].masks.shape[0] == len(masks)


def test_merged_windows_keep_an_object_two_windows_found_once():
    plan = tiles.windows((100, 200), 2.0, 128)  # 64-px windows overlapping by 16 px
    assert plan is not None
    obj = _disc((100, 200), 45, 56, 6)
    found = []
    for y0, y1, x0, x1 in plan.windows:
        crop = obj[y0:y1, x0:x1]
        found.append([InstanceMask(crop, 0.9)] if crop.sum() == obj.sum() else [])
    assert sum(len(f) for f in found) >= 2  # the object lies whole in more than one window
    merged = tiles.merge_windows(found, plan, (100, 200), InferenceConfig())
    assert len(merged) == 1 and merged[0].shape == (100, 200)
    assert np.array_equal(merged[0].mask, obj)


def test_a_trained_scale_is_saved_and_prediction_runs_in_windows(tmp_path):
    from engine.data.synthetic import write_synthetic_dataset
    from engine.solo.checkpoint import load_model
    from engine.solo.config import TrainConfig
    from engine.solo.predict import inference_settings, predict_folder
    from engine.solo.train import train

    images, gt = write_synthetic_dataset(tmp_path / "d", 2, seed=3, size=(160, 160), kind="microscopy")
    cfg = TrainConfig(iters=2, batch=1, size=128, object_px=16, copy_paste=0.0, checkpoint_every=100)
    result = train(images, gt, tmp_path / "run", cfg=cfg)
    model, state = load_model(result.model_path, "cpu")
    _size, _inference, scale = inference_settings(model, state)
    assert scale > 0 and state["train_config"]["object_px"] == 16
    plan = tiles.windows((160, 160), scale, 128)
    assert plan is not None and len(plan.windows) <= 9, scale
    report = predict_folder([images], result.model_path, score_thr=0.0)
    assert len(report.results) == 2
    assert all(m.shape == (160, 160) for r in report.results for m in r.instances)
