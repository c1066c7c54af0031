"""Every parameter value the panel offers works on any image (property-based, hypothesis).

The ranges below are a superset of the panel's controls (τ slider 0.05–0.95, min score 0–0.95,
any non-empty set of pyramid scales, top-k auto or 1–500, min area 0–10⁶ px, both NMS kernels
with σ 0.1–20, split and refine on or off, refine radius auto or 1–64 px). Images include the
ones that broke post-processing before: noise (no candidate survives τ), flat colour, one pixel
wide, and key maps with a 1×1 grid.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.cli import main
from engine.freemask.features import Features
from engine.freemask.postprocess import FreeMaskParams, postprocess

SCALES = (1.0, 0.5, 0.25, 0.125, 0.75, 2.0)

params_strategy = st.builds(
    FreeMaskParams,
    tau=st.integers(5, 95).map(lambda v: v / 100),
    min_score=st.integers(0, 95).map(lambda v: v / 100),
    scales=st.sets(st.sampled_from(SCALES), min_size=1).map(lambda s: tuple(sorted(s, reverse=True))),
    score_stride=st.sampled_from((8, 16, 32)),
    top_k=st.one_of(st.none(), st.integers(1, 500)),
    min_area=st.integers(0, 1_000_000),
    nms_kernel=st.sampled_from(("gaussian", "linear")),
    nms_sigma=st.floats(0.1, 20.0),
    split_components=st.booleans(),
    refine=st.booleans(),
    refine_radius=st.one_of(st.none(), st.integers(1, 64)),
)


def _image(kind: str, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if kind == "flat":
        return np.full((h, w, 3), rng.integers(0, 256), dtype=np.uint8)
    if kind == "stripes":
        img = np.zeros((h, w, 3), np.uint8)
        img[:, ::4] = 255
        return img
    yy, xx = np.mgrid[:h, :w]  # blobs
    img = np.zeros((h, w, 3), np.uint8)
    for _ in range(3):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(2, max(3, min(h, w) // 3))
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    return img


@pytest.fixture(scope="module")
def real_features(extractor):
    """Backbone features of awkward images (computed once): noise, flat, stripes, blobs, 1-px wide."""
    shapes = [("noise", 200, 240), ("flat", 64, 64), ("stripes", 48, 96), ("blobs", 120, 90), ("noise", 40, 1)]
    out = []
    for i, (kind, h, w) in enumerate(shapes):
        image = _image(kind, h, w, i)
        out.append((image, extractor.extract(image)))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=params_strategy, which=st.integers(0, 4))
def test_every_panel_value_works_on_awkward_real_features(real_features, params, which):
    image, feats = real_features[which]
    result = postprocess(feats, params, image)
    top_k = params.top_k or 20
    assert len(result.instances) <= max(top_k, 100)
    for inst in result.instances:
        assert inst.mask.shape == image.shape[:2] and inst.area >= max(params.min_area, 2)
        assert 0.0 <= inst.score <= 1.0 + 1e-6
    assert result._soft.shape[0] == len(result.instances)


@settings(max_examples=60, deadline=None)
@given(params=params_strategy, h=st.integers(1, 12), w=st.integers(1, 12), dim=st.integers(2, 16),
       scale=st.sampled_from((0.25, 1.0, 3.0)), seed=st.integers(0, 2**16), with_image=st.booleans())
def test_every_panel_value_works_on_any_key_map(params, h, w, dim, scale, seed, with_image):
    """Random key maps of any grid (1×1 included) and input scale, with and without the guide image."""
    g = torch.Generator().manual_seed(seed)
    keys = F.normalize(torch.randn(dim, h, w, generator=g), dim=0)
    H, W = max(1, round(h * 8 / scale)), max(1, round(w * 8 / scale))
    feats = Features(keys=keys, image_size=(H, W), input_size=(h * 8, w * 8), input_scale=scale,
                     auto_scale=scale > 1, object_size=None)
    image = _image("blobs", H, W, seed) if with_image else None
    result = postprocess(feats, params, image)
    for inst in result.instances:
        assert inst.mask.shape == (H, W) and inst.mask.any()
    if result.instances:
        assert result.soft_mask(0).shape == (H, W)


def test_no_candidate_above_tau_gives_no_masks(real_features):
    """Noise at a low τ: every query mask covers the image and is dropped as background."""
    image, feats = real_features[0]
    for tau in (0.05, 0.3, 0.5):
        result = postprocess(feats, replace(FreeMaskParams(), tau=tau), image)
        assert isinstance(result.instances, list)


def test_cli_low_tau_on_noise_exits_cleanly(tmp_path, capsys):
    """The reported crash: `freesolo freemask` on a noise image with --tau 0.3."""
    from PIL import Image

    folder = tmp_path / "noise"
    folder.mkdir()
    Image.fromarray(_image("noise", 200, 240, 0)).save(folder / "noise.png")
    for tau in ("0.3", "0.05"):
        code = main(["freemask", str(folder), "--out", str(tmp_path / f"out{tau}.json"), "--tau", tau])
        err = capsys.readouterr().err
        assert code == 0, err
        assert "error" not in err
