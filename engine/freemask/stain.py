"""Stained brightfield (H&E) images: what the network sees is the hematoxylin channel.

In H&E histology the nuclei are the hematoxylin-stained (purple) blobs on eosin-stained (pink)
tissue. ImageNet features of the colour image describe tissue texture; a query on one nucleus
lights up the whole tissue, and the blob-size estimate measures tissue structures (≈ 95 px)
instead of nuclei (≈ 15 px). The hematoxylin channel alone looks like fluorescence nuclei:
bright blobs on a dark background, where Free Mask and the automatic input scale work.

Colour deconvolution (Ruifrok & Johnston, Anal. Quant. Cytol. Histol. 2001): optical densities
``OD = -log10((I + 1) / 256)`` per channel are a sum of the stains' OD vectors,
``OD = c_H·h + c_E·e + c_R·r``; the stain amounts are ``OD @ inv([h; e; r])``.

Detection (``he_fraction``): stained tissue is magenta-to-purple, so green is the lowest channel
in most pixels; in photos such pixels are rare (measured: H&E crops 77–100 % of pixels, COCO
photos 0–9 %, fluorescence 0 %).
"""

from __future__ import annotations

import numpy as np

from engine.freemask.input_scale import is_single_channel_like

STAINS = ("auto", "he", "none")
HE_MIN_FRACTION = 0.5  # share of magenta-ish pixels from which an image counts as H&E
# measured 2026-12-01: residual share 0.20-0.33 on 224 MoNuSeg tiles (eosin median down to 0.019),
# 0.33-0.58 on the 14 of 80 synthetic photos and drawings that pass the magenta test (6 of them with
# a negative dye median); one drawing (0.325) still passes
HE_MAX_RESIDUAL = 0.34
HE_MIN_DYE = (0.05, 0.015)  # median hematoxylin, eosin optical density
HE_MIN_OD = 0.15  # pixels with less optical density (near white) are left out of the fit
_GREEN_MARGIN = 8  # grey levels by which green must be below both red and blue
# stain OD vectors (rows: hematoxylin, eosin, residual), the values skimage and ImageJ use
_HER = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HER_INV = np.linalg.inv(_HER / np.linalg.norm(_HER, axis=1, keepdims=True))


def _sample(image: np.ndarray) -> np.ndarray:
    """Every step-th row and column: about 250,000 pixels, what the image-wide statistics look at."""
    step = max(1, int(np.sqrt(image.shape[0] * image.shape[1] / 250_000)))
    return image[::step, ::step]


def _optical_density(pixels: np.ndarray) -> np.ndarray:
    """Beer–Lambert optical density of 8-bit RGB pixels (..., 3), float32."""
    return -np.log10((pixels[..., :3].astype(np.float32) + 1.0) / 256.0)


def he_fraction(image: np.ndarray) -> float:
    """Share of pixels whose green is below both red and blue (0 for grayscale images)."""
    if image.ndim != 3 or image.shape[2] < 3:
        return 0.0
    px = _sample(image)[..., :3].astype(np.int32)
    return float((px[..., 1] < np.minimum(px[..., 0], px[..., 2]) - _GREEN_MARGIN).mean())


def stain_fit(image: np.ndarray) -> tuple[float, float, float]:
    """How H&E colour deconvolution explains the image's coloured pixels: (residual share, median
    hematoxylin, median eosin). A real H&E slide is two dyes: the residual (third) component
    carries little of the optical density and both dyes are present; a magenta-ish photo or
    drawing leaves a large residual or one dye negative."""
    od = _optical_density(_sample(image))
    amounts = od[od.sum(axis=-1) > HE_MIN_OD] @ _HER_INV.astype(np.float32)
    if len(amounts) == 0:
        return 1.0, 0.0, 0.0
    residual = float(np.abs(amounts[:, 2]).sum() / max(float(np.abs(amounts).sum()), 1e-6))
    return residual, float(np.median(amounts[:, 0])), float(np.median(amounts[:, 1]))


def looks_like_he(image: np.ndarray) -> bool:
    """Mostly pixels with green below red and blue, and colours that two dyes explain (``stain_fit``)."""
    if image.dtype != np.uint8 or he_fraction(image) < HE_MIN_FRACTION:
        return False
    residual, h, e = stain_fit(image)
    return residual <= HE_MAX_RESIDUAL and h >= HE_MIN_DYE[0] and e >= HE_MIN_DYE[1]


def _amount(pixels: np.ndarray) -> np.ndarray:
    return _optical_density(pixels) @ _HER_INV[:, 0].astype(np.float32)


def hematoxylin(image: np.ndarray, chunk_px: int = 1 << 20) -> np.ndarray:
    """The hematoxylin amount per pixel as a uint8 image (H, W, 3; grey), stretched to its 1–99.5 %.

    Converted in row chunks of about ``chunk_px`` pixels: the working memory stays small on
    whole-slide-sized images (the result is as large as the input)."""
    h, w = image.shape[:2]
    lo, hi = np.percentile(_amount(_sample(image)), [1, 99.5])
    out = np.empty((h, w, 3), np.uint8)
    rows = max(1, chunk_px // max(w, 1))
    for y in range(0, h, rows):
        grey = np.clip((_amount(image[y:y + rows]) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
        out[y:y + rows] = (grey * 255.0 + 0.5).astype(np.uint8)[..., None]
    return out


def resolve_stain(image: np.ndarray, mode: str) -> str:
    """What ``mode`` ('auto', 'he', 'none') means for this image: 'he' or 'none'."""
    if mode not in STAINS:
        raise ValueError(f"stain must be one of {', '.join(STAINS)}, got {mode!r}")
    if mode == "auto":
        return "he" if looks_like_he(image) else "none"
    return mode if image.ndim == 3 and image.shape[2] >= 3 else "none"


def stain_view(image: np.ndarray, stain: str) -> np.ndarray:
    """The image as the network sees it: its hematoxylin channel for 'he', itself otherwise."""
    return hematoxylin(image) if stain == "he" else image


def looks_like_microscopy(image: np.ndarray, stain: str) -> bool:
    """Stained (H&E, seen through its hematoxylin channel), grey-level or one-dye: the images on
    which the classical proposals join Free Mask by default (``GeneratorConfig.classical_on_microscopy``)."""
    return stain == "he" or is_single_channel_like(image)
