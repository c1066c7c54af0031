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
