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


def _gray_small(image: np.ndarray, rows_per_band: int = 1024) -> tuple[np.ndarray, float]:
    """The image in grey, box-filtered and shrunk to ``ANALYSIS_SIDE``; converted ``rows_per_band`` rows
    at a time and filtered in place, so a slide-sized image gets one float copy of one channel only."""
    gray = np.empty(image.shape[:2], dtype=np.float32)
    for r0 in range(0, gray.shape[0], rows_per_band):
        band = image[r0: r0 + rows_per_band].astype(np.float32)
        gray[r0: r0 + rows_per_band] = (band.mean(axis=2) if image.ndim == 3 else band) / 255.0
    f = max(1.0, max(gray.shape) / ANALYSIS_SIDE)
    if f > 1.0:
        ndimage.uniform_filter(gray, size=int(round(f)), output=gray)
        gray = ndimage.zoom(gray, 1.0 / f, order=1)
    return gray, f


def blob_scale_profile(image: np.ndarray, n_sigmas: int = 14) -> tuple[np.ndarray, np.ndarray, float]:
    """(sigmas in analysis pixels, strength per sigma, analysis downscale factor)."""
    gray, f = _gray_small(image)
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


def estimate_object_size(image: np.ndarray) -> float:
    """Typical object diameter in image pixels (a rough, label-free estimate)."""
    sigmas, strength, f = blob_scale_profile(image)
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
