"""Boundary refinement: an image-guided filter applied to upsampled soft masks.

Free Mask's soft masks come from a stride-8 feature grid, so their edges are blocky after
upsampling. He et al.'s guided filter makes the output a local linear function of the image
colours, which snaps mask edges to colour edges while keeping flat regions flat. Measured in
this project it is what turns coarse blobs into masks whose AP at strict IoU is non-zero.

Speed: the statistics of the guide (local means and the inverse colour covariance) depend only
on the image and the radius, so ``GuideStats`` computes them once and every mask reuses them;
each mask then costs two small box filters on its own crop. Large images are filtered at a
reduced resolution (He & Sun's "fast guided filter": coefficients at low resolution, applied to
the full-resolution guide).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

MAX_FILTER_SIDE = 512  # guide statistics are computed at most at this resolution
MIN_FILTER_RADIUS = 4  # ... and at a resolution where the radius is about this many pixels
BAND_PX = 1 << 22  # full-resolution filtering works on bands of about this many pixels


@lru_cache(maxsize=256)
def _window_count(h: int, w: int, r: int) -> np.ndarray:
    """Number of in-image pixels in each (2r+1)² window of an (h, w) grid (cached: crops repeat)."""
    def axis(n: int) -> np.ndarray:
        idx = np.arange(n)
        return (np.minimum(idx + r, n - 1) - np.maximum(idx - r, 0) + 1).astype(np.float32)

    count = axis(h)[:, None] * axis(w)[None, :]
    count.setflags(write=False)
    return count


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)² window of ``x`` (C, H, W), windows clipped at the borders."""
    if int(radius) <= 0:
        return x
    return torch.from_numpy(_box_mean_np(np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32), radius))


def _box_mean_np(arr: np.ndarray, radius: int) -> np.ndarray:
    """:func:`box_mean` on a float32 array: scipy's separable running-sum filter (C code) with
    zero padding, divided by the number of in-image pixels of each window; one call for all
    channels, no Python-level loops."""
    r = int(radius)
    if r <= 0:
        return arr
    _, h, w = arr.shape
    k = 2 * r + 1
    sums = ndimage.uniform_filter(arr, size=(1, k, k), mode="constant", cval=0.0)
    sums *= np.float32(k * k) / _window_count(h, w, r)
    return sums


def _lerp_axis(n_cells: int, start: float, count: int, step: float, offset: float):
    """Source cells and weights for ``count`` output pixels along one axis.

    Output pixel j sits at source position (start + j + 0.5)·step − 0.5 − offset, clamped to
    [0, n_cells − 1] (half-pixel centres, edges repeated: ``F.interpolate``'s convention).
    """
    pos = np.clip((np.arange(count, dtype=np.float64) + start + 0.5) * step - 0.5 - offset, 0, n_cells - 1)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_cells - 1)
    return i0, i1, (pos - i0).astype(np.float32)


def _bilinear_np(arr: np.ndarray, rows, cols) -> np.ndarray:
    """Separable bilinear resampling of ``arr`` (..., h, w) with ``_lerp_axis`` tables."""
    r0, r1, rw = rows
    c0, c1, cw = cols
    top, bottom = arr[..., r0, :], arr[..., r1, :]
    mid = top + (bottom - top) * rw[:, None]
    left, right = mid[..., c0], mid[..., c1]
    return left + (right - left) * cw


@dataclass
class GuideStats:
    """Per-image, per-radius statistics of the guide, shared by every mask of that image."""

    guide: torch.Tensor  # (C, h, w) guide at filter resolution, values in [0, 1]
    full_guide: torch.Tensor | np.ndarray  # (C, H, W) guide at image resolution: [0, 1] floats, or uint8 0..255
    mean: torch.Tensor  # (C, h, w)
    inv_cov: torch.Tensor  # (6, h, w) symmetric inverse (rr, rg, rb, gg, gb, bb), or (1, h, w) for gray
    radius: int  # radius at filter resolution
    factor: float  # image px per filter px

    @property
    def aligned(self) -> bool:
        """An integer factor: filter px i covers exactly image px [i·f, (i+1)·f)."""
        return float(self.factor).is_integer()

    @classmethod
    def compute(cls, guide: torch.Tensor | np.ndarray, radius: int, eps: float = 1e-3,
                max_side: int = MAX_FILTER_SIDE) -> "GuideStats":
        """Statistics of ``guide``: a (C, H, W) tensor with values in [0, 1], or a uint8 (H, W, C) image
        (kept as it is and converted to [0, 1] one band or one mask crop at a time, so a slide-sized
        image never gets a float copy)."""
        if isinstance(guide, np.ndarray):
            full = guide.transpose(2, 0, 1)
            band = lambda r0, r1: torch.from_numpy(np.ascontiguousarray(full[:, r0:r1], dtype=np.float32)) / 255.0
        else:
            full = guide.float()
            band = lambda r0, r1: full[:, r0:r1]
        c, H, W = full.shape
        factor = max(1.0, max(H, W) / max_side, radius / MIN_FILTER_RADIUS)
        small = _pooled(band, (H, W), factor)
        r = max(1, round(radius / factor))
        if c == 1:
            stats = box_mean(torch.cat([small, small * small]), r)
            var = stats[1] - stats[0] ** 2 + eps
            return cls(small, full, stats[0:1], (1.0 / var)[None], r, factor)
        if c != 3:
            raise ValueError(f"guide must have 1 or 3 channels, got {c}")
        i0, i1, i2 = small[0], small[1], small[2]
        stats = box_mean(torch.cat([small, torch.stack([i0 * i0, i0 * i1, i0 * i2, i1 * i1, i1 * i2, i2 * i2])]), r)
        m = stats[0:3]
        rr = stats[3] - m[0] * m[0] + eps
        rg = stats[4] - m[0] * m[1]
        rb = stats[5] - m[0] * m[2]
        gg = stats[6] - m[1] * m[1] + eps
        gb = stats[7] - m[1] * m[2]
        bb = stats[8] - m[2] * m[2] + eps
        # inverse of the symmetric 3×3 covariance by cofactors, vectorised over pixels
        c00 = gg * bb - gb * gb
        c01 = gb * rb - rg * bb
        c02 = rg * gb - gg * rb
        c11 = rr * bb - rb * rb
        c12 = rb * rg - rr * gb
        c22 = rr * gg - rg * rg
        det = (rr * c00 + rg * c01 + rb * c02).clamp_min(1e-12)
        inv = torch.stack([c00, c01, c02, c11, c12, c22]) / det
        return cls(small, full, m, inv, r, factor)

    def filter(self, src: torch.Tensor, box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """Guided-filter ``src`` (the soft mask inside ``box`` = (y0, y1, x0, x1) image px).

        Outside ``box`` the source is taken as zero. Returns the filtered crop (image px).
        """
        H, W = self.full_guide.shape[1:]
        box = box if box is not None else (0, H, 0, W)
        fbox = self._filter_box(box)
        return self._apply(_place(src, box, fbox, self.factor), fbox, box)

    def filter_soft(self, soft: torch.Tensor, box: tuple[int, int, int, int], tau: float | None = None,
                    band_px: int = BAND_PX) -> torch.Tensor:
        """Guided-filter a low-resolution soft map ``soft`` (covering the whole image) inside ``box``.

        Same result as upsampling ``soft`` to the image and calling :meth:`filter` with the
        whole map as source, but the map is resampled straight to filter resolution, so no
        full-resolution copy of it is ever made: this is the per-mask cost of a slider move.
        With ``tau`` the result is the bool mask (clamped value >= ``tau``), made band by band.
        """
        fbox = self._filter_box(box)
        if self.aligned:
            H, W = self.full_guide.shape[1:]
            size = (H / self.factor, W / self.factor)
        else:
            size = self.guide.shape[1:]
        return self._apply(upsample_crop(soft, size, fbox).numpy(), fbox, box, tau, band_px)

    def _filter_box(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """``box`` in filter pixels, grown by 2r so both box filters are exact inside it."""
        y0, y1, x0, x1 = box
        f, r = self.factor, self.radius
        h, w = self.guide.shape[1:]
        fy0, fy1 = max(0, int(y0 / f) - 2 * r), min(h, int(-(-y1 // f)) + 2 * r + 1)
        fx0, fx1 = max(0, int(x0 / f) - 2 * r), min(w, int(-(-x1 // f)) + 2 * r + 1)
        return fy0, fy1, fx0, fx1

    def _apply(self, p: torch.Tensor, fbox: tuple[int, int, int, int], box: tuple[int, int, int, int],
               tau: float | None = None, band_px: int = BAND_PX) -> torch.Tensor:
        """The guided filter of ``p`` (filter px, covering ``fbox``), evaluated on ``box`` (image px);
        with ``tau``, whether each value (clamped to [0, 1]) is at least ``tau`` (bool). Image-resolution
        work goes in bands of about ``band_px`` pixels, so a mask as large as a slide costs its output only.

        In numpy: one mask's arrays are small (tens of filter pixels a side), where numpy's
        per-operation overhead is lower than torch's.
        """
        fy0, fy1, fx0, fx1 = fbox
        y0, y1, x0, x1 = box
        f, r = self.factor, self.radius
        guide, mean, inv_cov, full_guide = self._arrays()
        p = p.numpy() if isinstance(p, torch.Tensor) else p
        g = guide[:, fy0:fy1, fx0:fx1]
        m = mean[:, fy0:fy1, fx0:fx1]
        inv = inv_cov[:, fy0:fy1, fx0:fx1]
        stats = _box_mean_np(np.concatenate([p[None], g * p[None]]), r)
        mean_p = stats[0]
        cov = stats[1:] - m * mean_p
        if g.shape[0] == 1:
            a = cov * inv
        else:
            a = np.stack([
                inv[0] * cov[0] + inv[1] * cov[1] + inv[2] * cov[2],
                inv[1] * cov[0] + inv[3] * cov[1] + inv[4] * cov[2],
                inv[2] * cov[0] + inv[4] * cov[1] + inv[5] * cov[2],
            ])
        b = mean_p - (a * m).sum(0)
        coef = _box_mean_np(np.concatenate([a, b[None]]), r)
        if f <= 1.0:
            crop = (slice(None), slice(y0 - fy0, y1 - fy0), slice(x0 - fx0, x1 - fx0))
            return torch.from_numpy(_combine(coef[crop], g[crop], tau))
        # fast guided filter: coefficients upsampled, applied to the full-res guide, a band of rows at a time
        out = np.empty((y1 - y0, x1 - x0), dtype=np.float32 if tau is None else bool)
        step = max(1, band_px // max(1, x1 - x0))
        for b0 in range(y0, y1, step):
            b1 = min(y1, b0 + step)
            full = full_guide[:, b0:b1, x0:x1]
            if full.dtype == np.uint8:
                full = full.astype(np.float32) / np.float32(255.0)
            out[b0 - y0: b1 - y0] = _combine(_upsample_window(coef, fbox, (b0, b1, x0, x1), f), full, tau)
        return torch.from_numpy(out)

    def prepare(self) -> None:
        """Make the numpy views now (before several threads filter masks with these statistics)."""
        self._arrays()

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """numpy views (no copies) of guide, mean, inverse covariance and full-resolution guide."""
        cached = getattr(self, "_np", None)
        if cached is None:
            full = self.full_guide
            cached = (*(np.ascontiguousarray(t.numpy(), dtype=np.float32) for t in (self.guide, self.mean, self.inv_cov)),
                      full if isinstance(full, np.ndarray) else np.ascontiguousarray(full.numpy(), dtype=np.float32))
            self._np = cached
        return cached


def _combine(coef: np.ndarray, guide: np.ndarray, tau: float | None) -> np.ndarray:
    """The filter output coef[-1] + Σ_c coef[c]·guide[c]; with ``tau``, whether it is at least ``tau``
    once clamped to [0, 1]."""
    out = coef[-1] + coef[0] * guide[0]
    for c in range(1, guide.shape[0]):
        out += coef[c] * guide[c]
    return out if tau is None else np.clip(out, 0.0, 1.0, out=out) >= tau


def _pooled(band, size: tuple[int, int], factor: float, rows_per_band: int = 1024) -> torch.Tensor:
    """The guide at filter resolution (C, h, w), read ``rows_per_band``-ish image rows at a time
    (``band(r0, r1)`` gives rows r0..r1 as (C, rows, W) floats in [0, 1]).

    An integer factor k: k × k cells (the common 1024² case: filter px i covers exactly image px
    [i·k, (i+1)·k), so masks are resampled by the image's own geometry), the last row and
    column repeated to whole cells. Otherwise area averaging: each band's columns are averaged
    to the filter's width, then the rows of all bands to its height.
    """
    H, W = size
    if factor <= 1.0:
        return band(0, H)
    if float(factor).is_integer():
        k = int(factor)
        step = max(1, rows_per_band // k) * k
        parts = []
        for r0 in range(0, H, step):
            x = band(r0, min(H, r0 + step))[None]
            pad = (0, (-W) % k, 0, (-x.shape[2]) % k)  # only the last band has a partial cell of rows
            parts.append(F.avg_pool2d(F.pad(x, pad, mode="replicate") if any(pad) else x, k)[0])
        return torch.cat(parts, dim=1)
    h, w = max(1, round(H / factor)), max(1, round(W / factor))
    columns = torch.cat([F.adaptive_avg_pool2d(x, (x.shape[1], w)) for x in
                         (band(r0, min(H, r0 + rows_per_band)) for r0 in range(0, H, rows_per_band))], dim=1)
    return F.adaptive_avg_pool2d(columns, (h, w))


def upsample_crop(soft: torch.Tensor, out_size: tuple[float, float], box: tuple[int, int, int, int]) -> torch.Tensor:
    """Bilinear upsampling of ``soft`` (h, w) to ``out_size``, evaluated only inside ``box``.

    ``out_size`` may be fractional (an image size divided by the filter's factor), so that
    output pixel i sits where the image's pixels [i·f, (i+1)·f) sit.
    ``box`` = (y0, y1, x0, x1) in output pixels; equals ``F.interpolate(align_corners=False)``
    on that window, without materialising the full-size map.
    """
    h, w = soft.shape
    y0, y1, x0, x1 = box
    arr = soft.numpy() if isinstance(soft, torch.Tensor) else soft
    rows = _lerp_axis(h, y0, y1 - y0, h / out_size[0], 0.0)
    cols = _lerp_axis(w, x0, x1 - x0, w / out_size[1], 0.0)
    return torch.from_numpy(np.ascontiguousarray(_bilinear_np(arr.astype(np.float32, copy=False), rows, cols)))


def _place(src: torch.Tensor, box, fbox, f: float) -> torch.Tensor:
    """The source crop (image px) placed into a zero canvas covering ``fbox`` (filter px)."""
    y0, y1, x0, x1 = box
    fy0, fy1, fx0, fx1 = fbox
    if f <= 1.0:
        canvas = torch.zeros(fy1 - fy0, fx1 - fx0)
        canvas[y0 - fy0: y1 - fy0, x0 - fx0: x1 - fx0] = src
        return canvas
    # resample the crop to filter resolution, then place it
    sy0, sy1 = int(y0 / f), max(int(y0 / f) + 1, round(y1 / f))
    sx0, sx1 = int(x0 / f), max(int(x0 / f) + 1, round(x1 / f))
    small = F.interpolate(src[None, None], size=(sy1 - sy0, sx1 - sx0), mode="area")[0, 0]
    canvas = torch.zeros(fy1 - fy0, fx1 - fx0)
    canvas[sy0 - fy0: sy1 - fy0, sx0 - fx0: sx1 - fx0] = small[: fy1 - sy0, : fx1 - sx0]
    return canvas


def _upsample_window(coef: np.ndarray, fbox, box, f: float) -> np.ndarray:
    """Bilinear values of ``coef`` (filter px, covering ``fbox``) at the image pixels of ``box``.

    Image px y sits at filter position (y + 0.5) / f − 0.5, clamped to the window ``fbox``
    (the filter's own window). For an integer factor that is exactly ``F.interpolate``'s
    mapping, which is several times faster than gathering, so it does the work there.
    """
    fy0, _, fx0, _ = fbox
    y0, y1, x0, x1 = box
    if float(f).is_integer():
        k = int(f)
        # only the cells around the box (one spare on each side) are interpolated
        a, b = max(0, (y0 - fy0 * k) // k - 1), min(coef.shape[1], (y1 - 1 - fy0 * k) // k + 2)
        c, d = max(0, (x0 - fx0 * k) // k - 1), min(coef.shape[2], (x1 - 1 - fx0 * k) // k + 2)
        window = torch.from_numpy(np.ascontiguousarray(coef[:, a:b, c:d]))[None]
        up = F.interpolate(window, scale_factor=k, mode="bilinear", align_corners=False)[0].numpy()
        oy, ox = (fy0 + a) * k, (fx0 + c) * k
        return up[:, y0 - oy: y1 - oy, x0 - ox: x1 - ox]
    rows = _lerp_axis(coef.shape[1], y0, y1 - y0, 1.0 / f, fy0)
    cols = _lerp_axis(coef.shape[2], x0, x1 - x0, 1.0 / f, fx0)
    return _bilinear_np(coef, rows, cols)


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float = 1e-3) -> torch.Tensor:
    """Filter ``src`` (H, W) guided by ``guide`` (C = 1 or 3, H, W) with values in [0, 1]."""
    stats = GuideStats.compute(guide, radius, eps, max_side=max(guide.shape[1:]))
    return stats.filter(src.float())
