"""Pseudo-label selection: which masks the student learns from, and ignore regions in training."""

import numpy as np
import torch

from engine.io.coco import build_coco_dataset, write_coco
from engine.selftrain.pseudo import SelectionConfig, select_pseudo_labels
from engine.ops.masks import border_sides
from engine.structures import is_ignored
from engine.structures import ImageResult, InstanceMask


def _box(y0, y1, x0, x1, shape=(100, 100)):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_border_sides_counts_touched_image_sides():
    assert border_sides(_box(10, 20, 10, 20)) == 0
    assert border_sides(_box(0, 20, 10, 20)) == 1
    assert border_sides(_box(0, 100, 0, 20)) == 3


def test_selection_keeps_best_plausible_masks_and_marks_the_rest_ignore():
    masks = [
        InstanceMask(_box(10, 30, 10, 30), score=0.9),  # good object
        InstanceMask(_box(0, 100, 0, 60), score=0.95),  # background: 60% of the image, 3 sides
        InstanceMask(_box(50, 51, 50, 51), score=0.8),  # one pixel: too small
        InstanceMask(_box(40, 60, 40, 60), score=0.5),  # good object
        InstanceMask(_box(70, 90, 70, 90), score=0.4),  # good, but beyond top 2
        InstanceMask(_box(70, 90, 10, 30), score=0.1),  # under the score floor
    ]
    [res] = select_pseudo_labels([ImageResult("a.png", 100, 100, masks)], SelectionConfig(top=2, min_score=0.2))
    assert len(res.instances) == len(masks)  # nothing is dropped
    kept = [m.score for m in res.instances if not is_ignored(m)]
    assert kept == [0.9, 0.5]
    assert sorted(m.score for m in res.instances if is_ignored(m)) == [0.1, 0.4, 0.8, 0.95]


def test_ignore_regions_survive_coco_and_downweight_negatives_in_training(tmp_path):
    from PIL import Image

    from engine.solo.data import flip_sample, load_training_set
    from engine.solo.targets import TargetConfig, batch_targets

    image = np.full((64, 64, 3), 90, np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    masks = [InstanceMask(_box(8, 24, 8, 24, (64, 64)), score=0.9), InstanceMask(_box(36, 60, 36, 60, (64, 64)), score=0.1)]
    selected = select_pseudo_labels([ImageResult("a.png", 64, 64, masks)], SelectionConfig(top=1))
    path = write_coco(tmp_path / "m.json", build_coco_dataset(selected))
    [sample], problems = load_training_set(tmp_path, path, 64)
    assert not problems
    assert sample.masks.shape[0] == 1 and sample.ignore is not None and sample.ignore.shape[0] == 1
    assert bool(sample.ignore[0, 48, 48]) and not bool(sample.masks[0, 48, 48])
    flipped = flip_sample(sample)
    assert torch.equal(flipped.ignore, sample.ignore.flip(-1))
    cfg = TargetConfig(num_grids=(8,), scale_ranges=((1, 64),))
    plain = batch_targets([sample.masks], (64, 64), cfg)
    down = batch_targets([sample.masks], (64, 64), cfg, None, [sample.ignore], ignore_factor=0.1)
    # cell (6, 6) lies inside the ignored mask: its background weight drops, elsewhere it stays
    assert plain.weight[0][0, 6, 6] == 1.0 and abs(float(down.weight[0][0, 6, 6]) - 0.1) < 1e-6
    assert down.weight[0][0, 0, 7] == 1.0


def test_low_scoring_unselected_masks_are_dropped_not_ignored():
    masks = [InstanceMask(_box(10, 30, 10, 30), score=0.9), InstanceMask(_box(40, 60, 40, 60), score=0.2),
             InstanceMask(_box(70, 90, 70, 90), score=0.05)]
    [res] = select_pseudo_labels([ImageResult("a.png", 100, 100, masks)],
                                 SelectionConfig(top=1, min_score=0.3, ignore_min_score=0.1))
    assert [(m.score, is_ignored(m)) for m in res.instances] == [(0.9, False), (0.2, True)]


def test_a_folder_score_floor_keeps_many_masks_where_an_image_has_many_good_ones():
    crowded = [InstanceMask(_box(15 * i + 5, 15 * i + 13, 15 * j + 5, 15 * j + 13), score=0.8 + 0.001 * (i * 6 + j))
               for i in range(6) for j in range(6)]  # 36 small objects, all scoring high
    sparse = [InstanceMask(_box(10, 40, 10, 40), score=0.7)] + [
        InstanceMask(_box(50, 60, 50, 60), score=0.0001 * k) for k in range(60)]  # one object, weak rest
    cfg = SelectionConfig(top=100, score_quantile=0.62, min_area_frac=0.0005)
    results = [ImageResult("a.png", 100, 100, crowded), ImageResult("b.png", 100, 100, sparse)]
    a, b = select_pseudo_labels(results, cfg)
    assert sum(not is_ignored(m) for m in a.instances) == 36  # every nucleus of the crowded image
    assert [m.score for m in b.instances if not is_ignored(m)] == [0.7]  # the weak rest falls under the folder floor
    top8 = select_pseudo_labels(results, SelectionConfig(top=8, min_area_frac=0.0005))
    assert sum(not is_ignored(m) for m in top8[0].instances) == 8
    assert sum(not is_ignored(m) for m in top8[1].instances) == 8


def test_a_mask_mostly_under_a_better_positive_is_not_a_second_positive():
    masks = [InstanceMask(_box(10, 40, 10, 40), score=0.9),
             InstanceMask(_box(12, 38, 12, 30), score=0.8),  # inside the first one
             InstanceMask(_box(30, 60, 30, 60), score=0.7)]  # overlaps it by a ninth: its own object
    [res] = select_pseudo_labels([ImageResult("a.png", 100, 100, masks)], SelectionConfig(top=10, max_covered=0.5))
    assert [(m.score, is_ignored(m)) for m in res.instances] == [(0.9, False), (0.8, True), (0.7, False)]
    [plain] = select_pseudo_labels([ImageResult("a.png", 100, 100, masks)], SelectionConfig(top=10))
    assert not any(is_ignored(m) for m in plain.instances)


def test_round_one_selection_follows_the_selftrain_config():
    from engine.selftrain.config import SelfTrainConfig
    from engine.selftrain.rounds import coarse_selection

    cfg = coarse_selection(SelfTrainConfig(coarse_top=7, coarse_quantile=0.25))
    assert (cfg.top, cfg.score_quantile, cfg.max_covered) == (7, 0.25, 0.5)
