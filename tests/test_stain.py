"""Stained brightfield (H&E) images: detected, and the network sees their hematoxylin channel."""

import numpy as np
import pytest

from engine.data.synthetic import make_sample
from engine.eval.coco_eval import evaluate_segm
from engine.freemask.features import Features, FeatureConfig, FeatureExtractor
from engine.freemask.postprocess import postprocess
from engine.generators.tiling import plan_tiles, tile_config, whole_image_scale
from engine.data.synthetic import sample_seed
from engine.freemask.stain import (
    he_fraction,
    hematoxylin,
    looks_like_he,
    looks_like_microscopy,
    resolve_stain,
    stain_fit,
    stain_view,
)
from engine.io.coco import build_coco_dataset
from engine.io.masks import label_image_to_masks
from engine.structures import ImageResult, InstanceMask

_H = np.array([0.65, 0.70, 0.29])
_E = np.array([0.07, 0.99, 0.11])


def he_rendering(seed: int, size=(256, 256)) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic microscopy nuclei drawn as brightfield H&E: hematoxylin where the nuclei are,
    eosin everywhere (Beer–Lambert: intensity = 255 · 10^(−OD))."""
    grey, labels = make_sample(seed, size, kind="microscopy")
    t = grey.astype(np.float32).mean(axis=2) / 255.0 if grey.ndim == 3 else grey / 255.0
    rng = np.random.default_rng(seed)
    eosin = 0.25 + 0.1 * rng.random(t.shape)
    od = (1.2 * t)[..., None] * _H + eosin[..., None] * _E
    return np.clip(255.0 * 10.0 ** (-od), 0, 255).astype(np.uint8), labels


def test_detection_separates_stained_tissue_from_photos_and_fluorescence():
    he, _ = he_rendering(1)
    photo, _ = make_sample(1, (256, 256), kind="photo")
    fluo, _ = make_sample(1, (256, 256), kind="microscopy")
    assert he_fraction(he) > 0.9 and looks_like_he(he)
    assert not looks_like_he(photo) and he_fraction(photo) < 0.3
    assert he_fraction(fluo) == 0.0 and he_fraction(fluo[..., 0]) == 0.0
    assert resolve_stain(he, "auto") == "he" and resolve_stain(photo, "auto") == "none"
    assert resolve_stain(photo, "he") == "he" and resolve_stain(he, "none") == "none"
    assert resolve_stain(fluo[..., 0], "he") == "none"  # a grey image has no stains to separate
    with pytest.raises(ValueError, match="stain must be one of"):
        resolve_stain(he, "pap")


def test_magenta_photos_are_not_taken_for_stained_tissue():
    """Synthetic photos with purple backgrounds pass the green-below-red-and-blue test; two dyes do
    not explain their colours (photos 1, 4 and 8 of this set were taken for H&E before)."""
    for i in range(10):
        photo, _ = make_sample(sample_seed(1000, i), (320, 320), kind="photo")
        assert not looks_like_he(photo), i
    he, _ = he_rendering(2)
    residual, h, e = stain_fit(he)
    assert residual < 0.1 and h > 0.05 and e > 0.05


def test_grey_level_images_count_as_microscopy():
    fluo, _ = make_sample(1, (128, 128), kind="microscopy")
    photo, _ = make_sample(1, (128, 128), kind="photo")
    he, _ = he_rendering(1, (128, 128))
    assert looks_like_microscopy(fluo, "none") and looks_like_microscopy(fluo[..., 0], "none")
    assert looks_like_microscopy((fluo * 200).astype(np.uint16), "none") and looks_like_microscopy(he, "he")
    assert not looks_like_microscopy(photo, "none")


def test_hematoxylin_makes_nuclei_bright_on_dark():
    he, labels = he_rendering(2)
    h = hematoxylin(he)
    assert h.shape == he.shape and h.dtype == np.uint8 and (h[..., 0] == h[..., 2]).all()
    assert h[labels > 0, 0].mean() > h[labels == 0, 0].mean() + 60
    assert stain_view(he, "none") is he


def _ap50(image: np.ndarray, labels: np.ndarray, extractor: FeatureExtractor, stain: str) -> tuple[float, Features]:
    feats = extractor.extract(image, FeatureConfig(stain=stain))
    result = postprocess(feats, image=image)
    h, w = labels.shape
    gt = build_coco_dataset([ImageResult("a.png", h, w, [InstanceMask(m, 1.0) for m in label_image_to_masks(labels)])])
    pred = build_coco_dataset([ImageResult("a.png", h, w, result.instances)])
    return float(evaluate_segm(gt, pred)["AP50"]), feats


def test_free_mask_finds_stained_nuclei_through_the_hematoxylin_channel(extractor):
    he, labels = he_rendering(3)
    seen, feats = _ap50(he, labels, extractor, "auto")
    colour, plain = _ap50(he, labels, extractor, "none")
    assert feats.stain == "he" and plain.stain == "none"
    assert feats.auto_scale and feats.input_scale > plain.input_scale  # small objects found, image upscaled
    assert seen > colour + 0.1 and seen > 0.3


def test_stain_is_part_of_the_cache_key_and_kept_in_the_cache(extractor):
    assert FeatureConfig(stain="none").cache_key() != FeatureConfig().cache_key()
    he, _ = he_rendering(4, (96, 96))
    feats = extractor.extract(he)
    assert Features.from_bytes(feats.to_bytes()).stain == "he"


def test_tiles_of_a_stained_image_share_its_stain_and_its_upscaled_input():
    he, _ = he_rendering(5)
    scale, auto, stain = whole_image_scale(he, FeatureConfig())
    assert stain == "he" and auto and scale > 1.5  # the nuclei's size, seen in the hematoxylin channel
    assert whole_image_scale(he, FeatureConfig(stain="none"))[0] == 1.0  # the colour image is not trusted
    plan = plan_tiles(he.shape[:2], scale, 256, 32, stain)
    assert len(plan.windows) > 1 and tile_config(FeatureConfig(), plan.scale, plan.stain).stain == "he"
