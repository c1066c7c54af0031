"""Automatic choice of the input scale: how large are the objects in this image?

Free Mask's queries live on a stride-32 grid, so objects narrower than about three cells
(≈ 96 input pixels) merge with their surroundings. Microscopy nuclei of 15–30 px therefore
need the image upscaled before the backbone pass, while photos do not. The estimate uses a
scale-normalised Laplacian-of-Gaussian: blob-like objects of diameter d respond most strongly
at σ ≈ d / (2√2).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

ANALYSIS_SIDE = 256  # the estimate runs on a copy whose long side is at most this
EXACT_LIMIT_PX = 16_000_000  # images up to this many pixels are grey-converted whole (a float copy ≤ 64 MB)
PRESHRINK_SIDE = 2048  # larger ones are first block-averaged to about this long side, band by band
BAND_PX = 4_000_000  # pixels converted to float at a time


def _gray_small(image: np.ndarray, rows_per_band: int = 1024,
                exact_limit_px: int = EXACT_LIMIT_PX) -> tuple[np.ndarray, float]:
    """The image in grey (0..1), box-filtered and shrunk to ``ANALYSIS_SIDE``; also the shrink factor.

    Up to ``exact_limit_px`` pixels: one float copy of one channel, box-filtered over the factor
    and zoomed. Larger images (a slide, a tiled mosaic) are first averaged over k × k blocks, k
    the integer that brings the long side to about ``PRESHRINK_SIDE``, a few rows of blocks at a
    time, so no image-sized float copy is made; the box filter and zoom then finish on that small
    copy (the same box width in image pixels, up to rounding, and the same output shape).
    """
    h, w = image.shape[:2]
    f = max(1.0, max(h, w) / ANALYSIS_SIDE)
    k = int(max(h, w) // PRESHRINK_SIDE)
    if h * w <= exact_limit_px or k < 2 or min(h, w) < 2 * k:
        gray = _to_gray(image, 0, h, rows_per_band)
        if f > 1.0:
            ndimage.uniform_filter(gray, size=int(round(f)), output=gray)
            gray = ndimage.zoom(gray, 1.0 / f, order=1)
        return gray, f
    out_shape = np.round(np.array([h, w]) / f)  # what ndimage.zoom(gray, 1 / f) gives on the whole image
    hb, wb = h // k, w // k  # whole blocks only: the last < k rows and columns are left out
    blocks = np.empty((hb, wb), dtype=np.float32)
    step = max(1, BAND_PX // (k * w))  # block rows per band
    for b0 in range(0, hb, step):
        b1 = min(hb, b0 + step)
        band = _to_gray(image, b0 * k, b1 * k, rows_per_band)[:, : wb * k]
        blocks[b0:b1] = band.reshape(b1 - b0, k, wb, k).mean(axis=(1, 3))
    size = int(round(f / k))
    if size > 1:
        ndimage.uniform_filter(blocks, size=size, output=blocks)
    return ndimage.zoom(blocks, out_shape / np.array([hb, wb]), order=1), f


def _to_gray(image: np.ndarray, r0: int, r1: int, rows_per_band: int = 1024) -> np.ndarray:
    """Rows ``r0:r1`` of the image as float32 grey in 0..1, converted ``rows_per_band`` rows at a time."""
    gray = np.empty((r1 - r0, *image.shape[1:2]), dtype=np.float32)
    for a in range(r0, r1, rows_per_band):
        band = image[a: min(r1, a + rows_per_band)].astype(np.float32)
        gray[a - r0: a - r0 + band.shape[0]] = (band.mean(axis=2) if image.ndim == 3 else band) / 255.0
    return gray


def blob_scale_profile(image: np.ndarray, n_sigmas: int = 14,
                       exact_limit_px: int = EXACT_LIMIT_PX) -> tuple[np.ndarray, np.ndarray, float]:
    """(sigmas in analysis pixels, strength per sigma, analysis downscale factor)."""
    gray, f = _gray_small(image, exact_limit_px=exact_limit_px)
    gray = (gray - gray.mean()) / (gray.std() + 1e-6)
    max_sigma = max(2.0, min(gray.shape) / 6.0)
    sigmas = np.geomspace(1.0, max_sigma, n_sigmas)
    strength = np.empty(n_sigmas)
    for i, s in enumerate(sigmas):
        resp = np.abs(s * s * ndimage.gaussian_laplace(gray, sigma=s))
        # local maxima only: texture gives many weak peaks, objects fewer strong ones
        peaks = resp[(resp == ndimage.maximum_filter(resp, size=max(3, int(2 * s) | 1))) & (resp > 0)]
        strength[i] = np.percentile(peaks, 90) if peaks.size else 0.0
    return sigmas, strength, f


def estimate_object_size(image: np.ndarray, exact_limit_px: int = EXACT_LIMIT_PX) -> float:
    """Typical object diameter in image pixels (a rough, label-free estimate; images over
    ``exact_limit_px`` pixels are block-averaged first, see ``_gray_small``)."""
    sigmas, strength, f = blob_scale_profile(image, exact_limit_px=exact_limit_px)
    best = sigmas[int(np.argmax(strength))]
    return float(best * 2.0 * np.sqrt(2.0) * f)


def colour_spread(image: np.ndarray) -> float:
    """How far the pixel colours leave one line in RGB space (second/first principal variance).

    0 for grayscale and single-dye fluorescence; photos are typically above 0.02.
    """
    if image.ndim == 2 or image.shape[2] == 1:
        return 0.0
    x = image.reshape(-1, image.shape[2])[:: max(1, image.shape[0] * image.shape[1] // 50_000)].astype(np.float64)
    x = x - x.mean(axis=0)
    ev = np.linalg.eigvalsh(x.T @ x / max(len(x), 1))
    return float(ev[-2] / ev[-1]) if ev[-1] > 1e-9 else 0.0


def is_single_channel_like(image: np.ndarray, max_spread: float = 0.01) -> bool:
    """True for grayscale or one-colour images (microscopy), where blob sizes mean objects.

    In colour photos the blob-size estimate is fooled by texture (gravel, foliage), so the
    automatic input scale only upsamples single-channel-like images.
    """
    return colour_spread(image) < max_spread
