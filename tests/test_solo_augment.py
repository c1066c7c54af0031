"""Copy-paste (the strong training view) on hand-made samples."""

import random

import torch

from engine.solo.augment import copy_paste
from engine.solo.data import TrainSample, flip_sample


def _sample(name, colour, boxes, size=64):
    image = torch.full((3, size, size), colour, dtype=torch.uint8)
    masks = torch.zeros(len(boxes), size, size, dtype=torch.bool)
    for k, (y0, y1, x0, x1) in enumerate(boxes):
        masks[k, y0:y1, x0:x1] = True
        image[:, y0:y1, x0:x1] = 200 + k
    return TrainSample(name, image, masks, torch.ones(len(boxes)), (size, size))


def test_pasted_objects_bring_their_pixels_and_masks_and_occlude_the_target():
    target = _sample("t", 10, [(0, 64, 0, 64)])  # one mask covering everything
    source = _sample("s", 50, [(5, 15, 5, 25), (30, 40, 30, 40)])
    out = copy_paste(target, source, random.Random(0), max_objects=2)
    assert out.masks.shape[0] == 3 and out.weights.shape == (3,)
    big, *pasted = out.masks
    for m in pasted:
        assert int(m.sum()) > 0  # a later paste may cover part of an earlier one, never all of a 10x10
        assert (out.image[0][m] >= 200).all()  # the source's object pixels came along
        assert not (big & m).any()  # the target mask lost the pasted pixels
    assert int(pasted[0].sum()) + int(pasted[1].sum()) + int(big.sum()) == 64 * 64
    again = copy_paste(target, source, random.Random(0), max_objects=2)
    assert torch.equal(again.image, out.image) and torch.equal(again.masks, out.masks)


def test_fully_covered_target_masks_are_dropped_and_empty_sources_change_nothing():
    target = _sample("t", 10, [(10, 14, 10, 14)], size=20)
    source = _sample("s", 50, [(0, 20, 0, 20)], size=20)  # pastes over the whole image
    out = copy_paste(target, source, random.Random(1))
    assert out.masks.shape[0] == 1 and bool(out.masks[0].all())
    empty = _sample("e", 50, [], size=20)
    assert copy_paste(target, empty, random.Random(1)) is target
    assert copy_paste(flip_sample(target), source, random.Random(1)).masks.shape[0] == 1
