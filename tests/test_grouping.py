"""The grouping generator: Felzenszwalb regions merged by their features into a hierarchy of masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.freemask.postprocess import FreeMaskParams
from engine.generators import grouping as G
from engine.generators.merge import GeneratorConfig, generate, merge, merge_scores
from engine.geometry import pixel_cell
from engine.structures import InstanceMask


def _regions(feat, lab, area, box) -> G._Regions:
    return G._Regions(np.asarray(feat, float), np.asarray(lab, float), np.asarray(area, float), np.asarray(box))


def _squares_image(size: int = 128) -> tuple[np.ndarray, list[np.ndarray]]:
    """Two flat-coloured squares (one of two halves of different colour) on a textured grey background."""
    rng = np.random.default_rng(1)
    img = (120 + rng.normal(0, 6, (size, size, 3))).clip(0, 255).astype(np.uint8)
    a = np.zeros((size, size), bool)
    a[16:56, 16:56] = True
    b = np.zeros((size, size), bool)
    b[70:112, 60:110] = True
    img[a] = (220, 40, 40)
    img[b] = (40, 60, 220)
    img[70:112, 85:110] = (40, 200, 220)  # the second object is made of two parts
    return img, [a, b]


@pytest.fixture(scope="module")
def squares(extractor):
    image, masks = _squares_image()
    return image, masks, extractor.extract(image)


def test_region_graph_lists_each_touching_pair_once():
    labels = np.array([[0, 0, 1, 1],
                       [0, 2, 2, 1],
                       [3, 3, 2, 1]])
    pairs = {tuple(p) for p in G.region_graph(labels).tolist()}
    assert pairs == {(0, 1), (0, 2), (0, 3), (1, 2), (2, 3)}
    assert len(G.region_graph(labels)) == len(pairs)


@pytest.mark.parametrize(("shape", "grid"), [((37, 50), (5, 7)), ((16, 16), (2, 2)), ((9, 40), (9, 3))])
def test_pixel_cells_follow_the_geometry_convention(shape, grid):
    cells = G.pixel_cells(shape, grid)
    for y in range(shape[0]):
        for x in range(shape[1]):
            assert cells[y, x] == pixel_cell(y, grid[0], shape[0]) * grid[1] + pixel_cell(x, grid[1], shape[1])


def test_the_hierarchy_merges_the_most_similar_neighbours_first_and_sums_add_up():
    # a chain 0 - 1 - 2 - 3: 1 and 2 have the same feature and colour, 0 and 3 differ from all
    feat = [[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]]
    lab = [[10, 0, 0], [50, 0, 0], [50, 0, 0], [90, 0, 0]]
    box = [[0, 4, 0, 1], [0, 4, 1, 2], [0, 4, 2, 3], [0, 4, 3, 4]]
    regions, merges = G.merge_hierarchy(_regions(feat, lab, [4] * 4, box), np.array([[0, 1], [1, 2], [2, 3]]),
                                        G.GroupingParams())
    assert merges[0] == (1, 2) and len(merges) == 3  # one region left at the end
    assert regions.area[4] == 8 and regions.area[-1] == 16
    np.testing.assert_allclose(regions.feat[4], [0, 2, 0])
    assert regions.box[-1].tolist() == [0, 4, 0, 4]
    d = G.distinctness(regions, merges)
    assert d[1] == pytest.approx(0.0) and d[2] == pytest.approx(0.0)  # merged with its twin
    assert d[-1] == 0.0 and d[4] > 0.5  # the pair is merged with something unlike it


def test_every_region_of_the_hierarchy_is_a_candidate_and_objects_are_found(squares):
    image, masks, feats = squares
    found = G.grouping_instances(feats, image, G.GroupingParams(top=300))
    assert found and all(m.source == "grouping" and m.shape == image.shape[:2] for m in found)
    priors = [m.extra["prior"] for m in found]
    assert priors == sorted(priors, reverse=True) and all(p > 0 for p in priors)
    for target in masks:  # each square, the two-part one included, is one of the hierarchy's regions
        best = max(float((m.mask & target).sum() / (m.mask | target).sum()) for m in found)
        assert best > 0.8
    assert max(m.extra["regions"] for m in found) > 1  # merged regions, not only the initial ones
    assert len(G.grouping_instances(feats, image, G.GroupingParams(top=5))) == 5


def test_grouping_joins_the_merge_with_its_prior_and_is_reused_across_tau(squares):
    image, _masks, feats = squares
    feats.memo.clear()
    config = GeneratorConfig(generators=("grouping",), classical_on_microscopy=False)
    results = [generate(feats, FreeMaskParams(tau=tau), image, config) for tau in (0.6, 0.7)]
    assert [m.score for m in results[0].instances] == [m.score for m in results[1].instances]
    assert {m.source for m in results[0].instances} == {"grouping"}
    assert any(kind == "grouping" for kind, _key in feats.memo)
    one = results[0].instances[0]
    plain = InstanceMask(one.crop, 1.0, box=one.box, shape=one.shape)
    with_prior = InstanceMask(one.crop, 1.0, box=one.box, shape=one.shape, extra={"prior": 0.25})
    base = float(merge_scores(feats, [plain], image, "both")[0])
    [kept] = merge(feats, [with_prior], FreeMaskParams(), 5, image)
    assert kept.score == pytest.approx(0.25 * base, rel=1e-5)  # the merge's measure times the prior
    assert merge(feats, [plain], FreeMaskParams(), 5, image)[0].score == pytest.approx(base, rel=1e-5)
