import numpy as np
import pytest
import torch

from engine.freemask.features import (
    FeatureCache,
    FeatureConfig,
    Features,
    choose_input_scale,
    extract_cached,
    fuse_levels,
    pca_project,
)
from engine.freemask.input_scale import estimate_object_size
from engine.data.synthetic import make_sample


def test_features_are_unit_vectors_on_stride8_grid(photo_features, photo_sample):
    f = photo_features
    h, w = f.input_size
    assert f.grid_size == (-(-h // 8), -(-w // 8))
    norms = f.keys.norm(dim=0)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)
    assert f.keys.shape[0] == FeatureConfig().dim
    assert f.image_size == photo_sample[0].shape[:2]


def test_fuse_levels_weights_each_level_equally():
    a = torch.randn(1, 4, 8, 8) * 100  # a large-magnitude level must not dominate
    b = torch.randn(1, 6, 4, 4)
    fused = fuse_levels([a, b], (8, 8))
    assert fused.shape == (10, 8, 8)
    assert torch.allclose(fused[:4].norm(dim=0), torch.ones(8, 8), atol=1e-4)
    assert torch.allclose(fused[4:].norm(dim=0), torch.ones(8, 8), atol=1e-4)


def test_pca_keeps_requested_dims_and_norm():
    x = torch.randn(32, 10, 12)
    out = pca_project(x, 8)
    assert out.shape == (8, 10, 12)
    assert torch.allclose(out.norm(dim=0), torch.ones(10, 12), atol=1e-4)
    assert pca_project(x, None).shape == (32, 10, 12)


def test_input_scale_bounds_large_and_tiny_images():
    cfg = FeatureConfig(input_scale=1.0)
    big = np.zeros((3000, 20000, 3), np.uint8)
    s, auto, _ = choose_input_scale(big, cfg)
    assert not auto and 20000 * s <= cfg.max_side + 1e-6
    thin = np.zeros((64, 20000, 3), np.uint8)
    s, _, _ = choose_input_scale(thin, cfg)
    assert 64 * s >= cfg.min_side - 1e-6  # the short side never collapses below the query grid
    tiny = np.zeros((10, 12, 3), np.uint8)
    s, _, _ = choose_input_scale(tiny, cfg)
    assert round(10 * s) >= cfg.min_side
    official = FeatureConfig(input_scale=1.0, short_side=800)
    s, _, _ = choose_input_scale(np.zeros((400, 600, 3), np.uint8), official)
    assert s == pytest.approx(2.0)


def test_auto_scale_upsamples_small_objects_only():
    photo, _ = make_sample(5, (320, 320), kind="photo")
    nuclei, labels = make_sample(5, (320, 320), kind="microscopy")
    size_nuclei = estimate_object_size(nuclei)
    size_photo = estimate_object_size(photo)
    true_diam = np.median([2 * np.sqrt((labels == k).sum() / np.pi) for k in range(1, labels.max() + 1)])
    assert 0.5 * true_diam <= size_nuclei <= 2.0 * true_diam
    assert size_photo > 1.5 * size_nuclei
    s_n, auto, _ = choose_input_scale(nuclei, FeatureConfig())
    s_p, _, _ = choose_input_scale(photo, FeatureConfig())
    assert auto and s_n >= 2.5 and s_n > s_p


def test_the_object_size_estimate_is_made_once_and_passed_to_the_backbone_pass(extractor):
    from engine.freemask.stain import stain_view
    from engine.generators.tiling import whole_image_choice, whole_image_scale

    nuclei, _ = make_sample(5, (160, 160), kind="microscopy")
    scale, auto, stain, size = whole_image_choice(nuclei, extractor.config)
    assert auto and size == estimate_object_size(stain_view(nuclei, stain))
    assert whole_image_scale(nuclei, extractor.config) == (scale, auto, stain)
    cfg = FeatureConfig()
    assert choose_input_scale(nuclei, cfg, size) == choose_input_scale(nuclei, cfg)
    assert choose_input_scale(nuclei, cfg, 4 * size)[0] < choose_input_scale(nuclei, cfg)[0]  # the given size is used
    feats = extractor.extract(nuclei, object_size=4 * size)
    assert feats.object_size == 4 * size and feats.input_scale == pytest.approx(
        choose_input_scale(stain_view(nuclei, stain), extractor.config, 4 * size)[0])


def test_cache_round_trip_and_hit_skips_backbone(extractor, photo_sample, tmp_path):
    cache = FeatureCache(tmp_path / "c")
    before = extractor.backbone_calls
    f1, hit1 = extract_cached(extractor, photo_sample[0], "abc", cache)
    f2, hit2 = extract_cached(extractor, photo_sample[0], "abc", cache)
    assert (hit1, hit2) == (False, True)
    assert extractor.backbone_calls == before + 1
    assert f2.image_size == f1.image_size and f2.config == f1.config
    assert torch.allclose(f1.keys, f2.keys, atol=2e-3)  # stored as float16
    # a damaged entry is recomputed rather than crashing
    cache.path_for("abc", extractor.config).write_bytes(b"garbage")
    _, hit3 = extract_cached(extractor, photo_sample[0], "abc", cache)
    assert hit3 is False
    # a different config is a different entry
    assert cache.path_for("abc", FeatureConfig(dim=32)) != cache.path_for("abc", FeatureConfig())


def test_features_bytes_reject_other_versions(photo_features):
    data = photo_features.to_bytes()
    assert Features.from_bytes(data).grid_size == photo_features.grid_size
    with pytest.raises(Exception):
        Features.from_bytes(b"not a torch file")


def test_single_channel_detection_gates_auto_upscaling():
    from engine.freemask.input_scale import colour_spread, is_single_channel_like

    nuclei, _ = make_sample(5, (160, 160), kind="microscopy")
    photo, _ = make_sample(5, (160, 160), kind="cartoon")
    green = np.zeros_like(nuclei)
    green[..., 1] = nuclei[..., 0]  # one-dye fluorescence shown in green
    assert is_single_channel_like(nuclei) and is_single_channel_like(green)
    assert not is_single_channel_like(photo) and colour_spread(photo) > 0.02
    # a colour photo keeps its native scale whatever its texture looks like
    s, auto, size = choose_input_scale(photo, FeatureConfig())
    assert auto and s == pytest.approx(1.0) and size is not None


def test_cache_entries_of_another_version_or_weights_file_are_rebuilt(extractor, photo_sample, tmp_path, monkeypatch):
    """An entry written by another feature format is recomputed (never used), and a backbone weights
    file replaced at the same path gets a new cache key."""
    import engine.freemask.features as features_mod

    cache = FeatureCache(tmp_path / "c")
    feats, _ = extract_cached(extractor, photo_sample[0], "img", cache)
    monkeypatch.setattr(features_mod, "FEATURE_FORMAT_VERSION", 99)
    stale_bytes = feats.to_bytes()  # written by "version 99"
    monkeypatch.undo()
    cache.path_for("img", extractor.config).write_bytes(stale_bytes)
    assert cache.get("img", extractor.config) is None
    _, hit = extract_cached(extractor, photo_sample[0], "img", cache)
    assert hit is False and cache.get("img", extractor.config) is not None  # rebuilt and stored again

    weights = tmp_path / "mine.pth"
    weights.write_bytes(b"one")
    key = FeatureConfig(backbone=str(weights)).cache_key()
    weights.write_bytes(b"other weights")
    assert FeatureConfig(backbone=str(weights)).cache_key() != key
