"""Deterministic synthetic images with exact instance labels.

Tests, the demo and the benchmarks need ground truth without shipping data sets, so
this module paints images whose instance label map is known by construction:

* ``"photo"``: objects (blobs, ellipses, stars, polygons, rounded rectangles) cut
  from real images that ship with scikit-image, pasted with shading, soft shadows
  and occlusion on a crop of another real texture (brick, grass, gravel, tissue...)
  under uneven light.  Grey sources get random tints and some objects are pulled
  towards the background's mean colour, so low-level colour grouping is not enough:
  objects differ from the background mainly by *which* texture they are made of.
* ``"cartoon"``: the earlier procedural version of ``"photo"`` (palette-coloured
  procedural textures on a smooth background, hues far from the background's);
  a colour segmenter such as Felzenszwalb does well on it.
* ``"microscopy"``: many small bright nuclei on a dark, noisy, unevenly lit
  background, some of them touching.

Everything is driven by ``np.random.default_rng(seed)``; no global random state.
"""

from __future__ import annotations

import colorsys
import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import polygon as draw_polygon

from engine.io.masks import label_image_to_crops
from engine.ops.masks import largest_part
from engine.structures import ImageResult, InstanceMask

__all__ = [
    "label_map_to_masks",
    "make_sample",
    "sample_seed",
    "write_synthetic_dataset",
]

KINDS = ("photo", "cartoon", "microscopy")
MIN_VISIBLE_PX = 40  # smaller visible remnants are not worth annotating


# ----------------------------------------------------------------------------- noise


def _bspline_matrix(n_out: int, scale: float) -> np.ndarray:
    """(n_out, n_in) weights that upsample a coarse grid with cubic B-splines."""
    pos = (np.arange(n_out) + 0.5) / scale + 1.0
    base = np.floor(pos).astype(int)
    t = pos - base
    weights = np.stack(
        [(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3], axis=1
    ) / 6.0
    n_in = int(base.max()) + 3
    mat = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    for k in range(4):
        mat[rows, base - 1 + k] = weights[:, k]
    return mat


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Noise in [0, 1] whose features are about ``scale`` pixels wide.

    A coarse random grid is upsampled with separable cubic B-splines (two small
    matrix products): much cheaper than a large Gaussian filter or ``ndi.zoom`` and
    free of border artefacts.
    """
    h, w = shape
    scale = max(float(scale), 1.0)
    ry, rx = _bspline_matrix(h, scale), _bspline_matrix(w, scale)
    grid = rng.standard_normal((ry.shape[1], rx.shape[1]))
    return _normalise(ry @ grid @ rx.T)


def _multiscale_noise(
    rng: np.random.Generator, shape: tuple[int, int], scales: Sequence[float], weights: Sequence[float]
) -> np.ndarray:
    """Weighted sum of smooth noise octaves, renormalised to [0, 1]."""
    acc = np.zeros(shape, dtype=np.float64)
    for s, wgt in zip(scales, weights):
        acc += wgt * _smooth_noise(rng, shape, s)
    return _normalise(acc)


def _normalise(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    if hi - lo < 1e-12:
        return np.zeros_like(x, dtype=np.float64)
    return (x - lo) / (hi - lo)


def _stripes(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, period: float, wobble: float
) -> np.ndarray:
    """Wavy stripes in [0, 1] at a random angle."""
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    warp = wobble * (_smooth_noise(rng, yy.shape, max(period * 3, 8.0)) - 0.5)
    return 0.5 + 0.5 * np.sin(2 * np.pi * u / period + warp)


# --------------------------------------------------------------------------- colours


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))))


def _palette(
    rng: np.random.Generator,
    hue: float,
    n: int,
    sat: tuple[float, float],
    val: tuple[float, float],
    hue_jitter: float = 0.05,
) -> np.ndarray:
    """``n`` colour stops (n, 3) around one hue, sorted dark to bright."""
    vals = np.sort(rng.uniform(*val, size=n))
    return np.stack(
        [_hsv(hue + rng.uniform(-hue_jitter, hue_jitter), rng.uniform(*sat), v) for v in vals]
    )


def _apply_palette(t: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Map a field in [0, 1] through piecewise-linear colour stops -> (..., 3) float."""
    n = len(palette)
    pos = np.clip(t, 0.0, 1.0) * (n - 1)
    i0 = np.clip(np.floor(pos).astype(int), 0, n - 2)
    frac = (pos - i0)[..., None]
    return palette[i0] * (1 - frac) + palette[i0 + 1] * frac


# ---------------------------------------------------------------------------- shapes


def _rotated_frame(
    rng: np.random.Generator, box: tuple[int, int, int, int], cy: float, cx: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """(u, v, dy, dx, θ) over ``box``: offsets from the centre, and the same turned by a random θ."""
    y0, y1, x0, x1 = box
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    theta = rng.uniform(0, np.pi)
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    return u, v, dy, dx, theta


def _shape_mask(
    rng: np.random.Generator, shape: tuple[int, int], cy: float, cx: float, diameter: float, kind: str
) -> np.ndarray:
    """Boolean mask of one object whose extent never exceeds ``diameter``."""
    h, w = shape
    r = diameter / 2.0
    y0, y1 = max(int(np.floor(cy - r)) - 1, 0), min(int(np.ceil(cy + r)) + 2, h)
    x0, x1 = max(int(np.floor(cx - r)) - 1, 0), min(int(np.ceil(cx + r)) + 2, w)
    out = np.zeros(shape, dtype=bool)
    if y1 <= y0 or x1 <= x0:
        return out
    u, v, dy, dx, theta = _rotated_frame(rng, (y0, y1, x0, x1), cy, cx)
    rho = np.hypot(dx, dy)

    if kind == "ellipse":
        b = r * rng.uniform(0.45, 1.0)
        local = (u / r) ** 2 + (v / b) ** 2 <= 1.0
    elif kind == "rounded_rect":
        # half-sides chosen so the whole rectangle fits in the circle of radius r
        ang = rng.uniform(0.35, 0.75)
        a, b = r * np.cos(ang), r * np.sin(ang)
        rc = min(a, b) * rng.uniform(0.15, 0.6)
        qu = np.maximum(np.abs(u) - (a - rc), 0)
        qv = np.maximum(np.abs(v) - (b - rc), 0)
        local = (np.abs(u) <= a) & (np.abs(v) <= b) & (np.hypot(qu, qv) <= rc)
    elif kind in ("star", "polygon"):
        n = int(rng.integers(5, 10))
        if kind == "star":
            angles = theta + np.arange(2 * n) * np.pi / n
            radii = np.where(np.arange(2 * n) % 2 == 0, r, r * rng.uniform(0.4, 0.65))
            radii = radii * rng.uniform(0.85, 1.0, size=2 * n)
        else:  # jittered even spacing: irregular, but never a sliver
            step = 2 * np.pi / n
            angles = theta + np.arange(n) * step + rng.uniform(-0.35, 0.35, size=n) * step
            radii = r * rng.uniform(0.6, 1.0, size=n)
        py = cy + radii * np.sin(angles) - y0
        px = cx + radii * np.cos(angles) - x0
        rr, cc = draw_polygon(py, px, shape=(y1 - y0, x1 - x0))
        local = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        local[rr, cc] = True
    elif kind == "blob":
        noise = _smooth_noise(rng, (y1 - y0, x1 - x0), max(diameter / 4.0, 2.0))
        field = noise - 1.4 * (rho / r) ** 2
        local = (field > rng.uniform(-0.55, -0.35)) & (rho <= r)
        local = ndi.binary_fill_holes(local)
        if local.any():
            local = largest_part(local, connectivity=1)
    else:  # pragma: no cover - guarded by the caller
        raise ValueError(f"unknown shape {kind!r}")

    out[y0:y1, x0:x1] = local
    return out


# -------------------------------------------------------------------- cartoon kind


def _texture(
    rng: np.random.Generator, shape: tuple[int, int], palette: np.ndarray, side: float, kind: str
) -> np.ndarray:
    """Full-frame RGB texture (float, [0, 1]); only the object's pixels are used."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    px = side / 320.0  # texture scales with the image
    if kind == "spots":
        t = 0.35 * _smooth_noise(rng, shape, 12 * px)
        n_spots = int(rng.integers(60, 160) * (h * w) / side**2)
        spot_r = rng.uniform(1.5, 4.5) * px
        spots = np.zeros(shape, dtype=bool)
        cy = rng.uniform(0, h, n_spots)
        cx = rng.uniform(0, w, n_spots)
        spots[np.clip(cy.astype(int), 0, h - 1), np.clip(cx.astype(int), 0, w - 1)] = True
        spots = ndi.distance_transform_edt(~spots) <= spot_r
        t = np.where(spots, 0.85 + 0.15 * t, t)
    elif kind == "stripes":
        t = _stripes(rng, yy, xx, rng.uniform(5, 14) * px, rng.uniform(0.5, 2.5))
    elif kind == "checker":
        theta = rng.uniform(0, np.pi)
        p = rng.uniform(5, 12) * px
        u = xx * np.cos(theta) + yy * np.sin(theta)
        v = -xx * np.sin(theta) + yy * np.cos(theta)
        t = ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float64)
        t = 0.15 + 0.7 * ndi.gaussian_filter(t, 0.6) + 0.15 * _smooth_noise(rng, shape, 20 * px)
    elif kind == "noise":
        t = _multiscale_noise(rng, shape, [2.0 * px, 6.0 * px, 20.0 * px], [0.5, 0.3, 0.2])
        t = np.clip((t - 0.5) * 1.8 + 0.5, 0, 1)
    else:  # pragma: no cover
        raise ValueError(kind)
    return _apply_palette(t, palette)


def _photo_background(rng: np.random.Generator, shape: tuple[int, int], hue: float) -> np.ndarray:
    h, w = shape
    side = float(min(h, w))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    palette = _palette(rng, hue, 3, sat=(0.15, 0.65), val=(0.2, 0.9), hue_jitter=0.08)
    parts = [
        _multiscale_noise(
            rng, shape, [side / 3, side / 10, side / 40, side / 120], [0.45, 0.3, 0.15, 0.1]
        ),
    ]
    weights = [1.0]
    if rng.random() < 0.5:
        parts.append(_stripes(rng, yy, xx, rng.uniform(0.04, 0.15) * side, rng.uniform(0.5, 3.0)))
        weights.append(rng.uniform(0.3, 0.8))
    theta = rng.uniform(0, 2 * np.pi)
    parts.append(_normalise(xx * np.cos(theta) + yy * np.sin(theta)))
    weights.append(rng.uniform(0.2, 0.9))
    t = _normalise(sum(wt * p for wt, p in zip(weights, parts)))
    return _apply_palette(t, palette)


def _place_photo_objects(
    rng: np.random.Generator, shape: tuple[int, int]
) -> list[np.ndarray]:
    """Full-extent masks in painting order, with limited mutual occlusion."""
    h, w = shape
    side = float(min(h, w))
    scale = side / 320.0
    n_obj = int(rng.integers(2, 8))
    shapes = ("blob", "ellipse", "star", "polygon", "rounded_rect")
    placed: list[np.ndarray] = []
    full_areas: list[int] = []
    for _ in range(n_obj):
        for _try in range(30):
            d = rng.uniform(30, 140) * scale
            m = 0.35 * d
            if placed and rng.random() < 0.35:  # overlap a predecessor: occlusion
                ys, xs = np.nonzero(placed[int(rng.integers(len(placed)))])
                j = int(rng.integers(len(ys)))
                ang = rng.uniform(0, 2 * np.pi)
                cy = float(np.clip(ys[j] + 0.4 * d * np.sin(ang), 0, h - 1))
                cx = float(np.clip(xs[j] + 0.4 * d * np.cos(ang), 0, w - 1))
            else:
                cy = rng.uniform(m, h - m) if h > 2 * m else h / 2
                cx = rng.uniform(m, w - m) if w > 2 * m else w / 2
            mask = _shape_mask(rng, shape, cy, cx, d, str(rng.choice(shapes)))
            area = int(mask.sum())
            # blobs can come out small; keep objects near their drawn size
            if area < max(MIN_VISIBLE_PX, 0.15 * d * d):
                continue
            # the newcomer may cover at most half of any earlier object
            ok = True
            for prev, prev_area in zip(placed, full_areas):
                if (prev & mask).sum() > 0.5 * prev_area:
                    ok = False
                    break
            if ok:
                placed.append(mask)
                full_areas.append(area)
                break
    return placed


def _window(mask: np.ndarray) -> tuple[slice, slice]:
    """Bounding box of ``mask`` grown by 1 px inside the image.

    The extra pixel gives distance transforms a background pixel to measure from,
    except where the object is cut by the image border (it continues out there).
    """
    sl = ndi.find_objects(mask.astype(np.uint8))[0]
    h, w = mask.shape
    return (
        slice(max(sl[0].start - 1, 0), min(sl[0].stop + 1, h)),
        slice(max(sl[1].start - 1, 0), min(sl[1].stop + 1, w)),
    )


def _visible(masks: Sequence[np.ndarray], shape: tuple[int, int]) -> list[int]:
    """Indices of the masks whose visible part (later masks paint over earlier
    ones) keeps at least ``MIN_VISIBLE_PX`` pixels; nearly hidden ones are dropped."""
    keep = list(range(len(masks)))
    while True:
        labels = np.zeros(shape, dtype=np.int32)
        for k, i in enumerate(keep, start=1):
            labels[masks[i]] = k
        counts = np.bincount(labels.ravel(), minlength=len(keep) + 1)[1:]
        small = [keep[j] for j, c in enumerate(counts) if c < MIN_VISIBLE_PX]
        if not small:
            return keep
        keep = [i for i in keep if i not in small]


def _shade(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """Multiplicative shading: directional light plus a darker rim."""
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    extent = max(np.ptp(ys), np.ptp(xs), 1) / 2.0
    theta = rng.uniform(0, 2 * np.pi)
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    proj = ((xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)) / extent
    light = 1.0 + rng.uniform(0.08, 0.22) * np.clip(proj, -1, 1)
    dist = ndi.distance_transform_edt(mask)
    rim = 0.8 + 0.2 * np.clip(dist / max(0.25 * extent, 1.0), 0, 1)
    return light * rim


def _make_cartoon(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    side = float(min(h, w))
    bg_hue = rng.random()
    canvas = _photo_background(rng, shape, bg_hue)
    masks = _place_photo_objects(rng, shape)

    keep = _visible(masks, shape)
    tex_kinds = ("spots", "stripes", "checker", "noise")
    for i in keep:
        mask = masks[i]
        canvas = _maybe_drop_shadow(canvas, mask, rng, side)
        hue = bg_hue + rng.uniform(0.18, 0.82)  # far from the background hue
        palette = _palette(rng, hue, 3, sat=(0.35, 0.95), val=(0.25, 0.95), hue_jitter=0.06)
        sl = _window(mask)  # texture only the bbox: fast
        local = mask[sl]
        tex = _texture(rng, local.shape, palette, side, str(rng.choice(tex_kinds)))
        tex = tex * _shade(rng, local)[..., None]
        canvas[sl][local] = tex[local]

    image, label_map = _camera_and_labels(rng, canvas, masks, keep, shape, max_noise=0.03)
    return image, _relabel(label_map)


# ---------------------------------------------------------------------- photo kind

# Real photographs and textures that ship inside scikit-image (no download needed).
_BANK_NAMES = (
    "brick", "grass", "gravel", "coffee", "chelsea", "astronaut", "rocket",
    "immunohistochemistry", "hubble_deep_field", "retina", "cat", "coins", "moon", "camera",
)
# sources that look like a surface rather than a scene; only these become backgrounds,
# so the background holds no object-like things (coins, faces) left unannotated
_BACKGROUND_SOURCES = (
    "brick", "grass", "gravel", "moon", "immunohistochemistry", "retina", "hubble_deep_field",
)
# crop boxes (fractions y0, y1, x0, x1) that leave out uninformative borders
_BANK_BOX = {"retina": (0.18, 0.82, 0.18, 0.82), "hubble_deep_field": (0.0, 0.75, 0.0, 1.0)}
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.5959, -0.2746, -0.3213], [0.2115, -0.5227, 0.3112]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


@functools.lru_cache(maxsize=1)
def _texture_bank() -> tuple[tuple[str, np.ndarray], ...]:
    """``(name, uint8 array)`` pairs: (H, W) for grey sources, (H, W, 3) for colour.

    Images that this scikit-image cannot load offline are skipped. Cached (the
    arrays are read-only), so every call sees the same bank and output stays
    deterministic by seed.
    """
    import skimage.data

    bank = []
    for name in _BANK_NAMES:
        try:
            arr = np.asarray(getattr(skimage.data, name)())
        except Exception:  # pragma: no cover - missing from this install / needs network
            continue
        if arr.ndim == 3:
            arr = arr[..., :3]
        if name in _BANK_BOX:
            y0, y1, x0, x1 = _BANK_BOX[name]
            h, w = arr.shape[:2]
            arr = arr[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)]
        arr = np.ascontiguousarray(arr, dtype=np.uint8)
        arr.setflags(write=False)
        bank.append((name, arr))
    if len(bank) < 2:  # pragma: no cover
        raise RuntimeError("the photo kind needs at least two scikit-image sample images")
    return tuple(bank)


def _colour_jitter(
    rgb: np.ndarray, hue_shift: float, sat: float, bright: float, contrast: float
) -> np.ndarray:
    """Hue rotation / saturation / brightness / contrast in YIQ space (cheap, linear)."""
    yiq = rgb @ _RGB2YIQ.T
    y = yiq[..., 0]
    mean = float(y.mean())
    y = (y - mean) * contrast + mean * bright
    c, s_ = np.cos(2 * np.pi * hue_shift), np.sin(2 * np.pi * hue_shift)
    i = sat * (c * yiq[..., 1] - s_ * yiq[..., 2])
    q = sat * (s_ * yiq[..., 1] + c * yiq[..., 2])
    return np.clip(np.stack([y, i, q], axis=-1) @ _YIQ2RGB.T, 0.0, 1.0)


def _real_texture(
    rng: np.random.Generator, src: np.ndarray, shape: tuple[int, int], side: float
) -> np.ndarray:
    """(h, w, 3) float crop of a bank image: random rot90/flip, 0.6-1.6x rescale
    (relative to a 320 px image), a random tint for grey sources and colour jitter."""
    from skimage.transform import resize

    h, w = shape
    big_h, big_w = src.shape[:2]
    k = int(rng.integers(4))
    th, tw = (w, h) if k % 2 else (h, w)  # size before the rotation
    zoom = rng.uniform(0.6, 1.6) * side / 320.0
    zoom = max(zoom, th / big_h, tw / big_w)  # the crop must fit in the source
    sh, sw = min(big_h, int(np.ceil(th / zoom))), min(big_w, int(np.ceil(tw / zoom)))
    best, best_score = None, -1.0
    for _ in range(4):  # prefer a crop with some texture over a flat patch of sky
        y = int(rng.integers(0, big_h - sh + 1))
        x = int(rng.integers(0, big_w - sw + 1))
        crop = src[y : y + sh, x : x + sw]
        sub = crop[::2, ::2].astype(np.float64)
        # contrast plus fine structure (mean absolute difference of neighbours)
        score = float(sub.std()) + 2.0 * float(np.abs(np.diff(sub, axis=0)).mean() + np.abs(np.diff(sub, axis=1)).mean())
        if score > best_score:
            best, best_score = crop, score
        if score > 60:
            break
    assert best is not None
    tex = resize(best.astype(np.float64) / 255.0, (th, tw), order=1, anti_aliasing=zoom < 1, preserve_range=True)
    tex = np.rot90(tex, k)
    if rng.random() < 0.5:
        tex = tex[:, ::-1]
    if tex.ndim == 2:  # grey source: random tint, so colours overlap sometimes
        tint = _hsv(rng.random(), rng.uniform(0.05, 0.4), 1.0)
        tex = tex[..., None] * tint / max(float(tint @ _RGB2YIQ[0]), 0.3)
        hue_shift = 0.0
    else:
        hue_shift = rng.uniform(-0.06, 0.06)
    return _colour_jitter(
        np.clip(tex, 0.0, 1.0),
        hue_shift,
        sat=rng.uniform(0.6, 1.3),
        bright=rng.uniform(0.75, 1.2),
        contrast=rng.uniform(0.7, 1.2),
    )


def _camera_and_labels(
    rng: np.random.Generator,
    canvas: np.ndarray,
    masks: list[np.ndarray],
    keep: list[int],
    shape: tuple[int, int],
    max_noise: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Slight camera blur and sensor noise, then the label map of the kept (visible) objects."""
    canvas = ndi.gaussian_filter(canvas, sigma=(0.6, 0.6, 0))
    canvas = canvas + rng.normal(0.0, rng.uniform(0.01, max_noise), size=canvas.shape)
    image = np.clip(np.round(canvas * 255), 0, 255).astype(np.uint8)
    label_map = np.zeros(shape, dtype=np.uint16)
    for k, i in enumerate(keep, start=1):
        label_map[masks[i]] = k
    return image, label_map


def _maybe_drop_shadow(canvas: np.ndarray, mask: np.ndarray, rng: np.random.Generator, side: float) -> np.ndarray:
    """Half the time, a soft drop shadow of ``mask`` darkens whatever lies below it."""
    if rng.random() < 0.5:
        off = rng.uniform(2, 7, size=2) * side / 320.0 * rng.choice([-1, 1], size=2)
        shadow = ndi.gaussian_filter(ndi.shift(mask.astype(np.float64), off, order=1), 3.0 * side / 320.0)
        canvas = canvas * (1.0 - rng.uniform(0.2, 0.45) * shadow)[..., None]
    return canvas


def _make_photo(
    rng: np.random.Generator, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """Textured objects cut from one real image pasted on a crop of another.

    Returns ``(image, labels, sources)``; ``sources`` names the bank image behind the
    background (``"background"``) and behind each label 1..K (``"objects"``).
    """
    h, w = shape
    side = float(min(h, w))
    bank = _texture_bank()
    names = [name for name, _ in bank]
    bg_choices = [i for i, name in enumerate(names) if name in _BACKGROUND_SOURCES] or list(range(len(bank)))
    bg_idx = int(rng.choice(bg_choices))
    canvas = _real_texture(rng, bank[bg_idx][1], shape, side)

    # gentle low-frequency illumination: a ramp plus a broad smooth bump
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = _normalise(xx * np.cos(theta) + yy * np.sin(theta)) - 0.5
    illum = 1.0 + rng.uniform(0.1, 0.45) * ramp + rng.uniform(0.0, 0.25) * (_smooth_noise(rng, shape, side / 2) - 0.5)
    canvas = canvas * illum[..., None]
    background = canvas.copy()

    masks = _place_photo_objects(rng, shape)
    keep = _visible(masks, shape)

    others = [i for i in range(len(bank)) if i != bg_idx]
    used: list[int] = []
    for i in keep:
        mask = masks[i]
        canvas = _maybe_drop_shadow(canvas, mask, rng, side)
        fresh = [j for j in others if j not in used]  # prefer sources not used yet
        src_idx = int(rng.choice(fresh or others))
        used.append(src_idx)
        sl = _window(mask)
        local = mask[sl]
        tex = _real_texture(rng, bank[src_idx][1], local.shape, side)
        if rng.random() < 0.35:  # camouflage: pull the mean colour towards the surroundings
            target = background[sl][local].mean(axis=0)
            tex = np.clip(tex + rng.uniform(0.5, 0.9) * (target - tex[local].mean(axis=0)), 0.0, 1.0)
        tex = tex * _shade(rng, local)[..., None]
        canvas[sl][local] = tex[local]

    image, label_map = _camera_and_labels(rng, canvas, masks, keep, shape, max_noise=0.025)
    # every kept object has >= MIN_VISIBLE_PX visible pixels, so no label is dropped
    sources = {"background": names[bg_idx], "objects": [names[j] for j in used]}
    return image, _relabel(label_map), sources


# ----------------------------------------------------------------- microscopy kind


def _nucleus_mask(
    rng: np.random.Generator, shape: tuple[int, int], cy: float, cx: float, diameter: float
) -> np.ndarray:
    """Ellipse with a slightly wavy outline; equivalent diameter ~= ``diameter``."""
    h, w = shape
    q = rng.uniform(0.65, 1.0)  # axis ratio
    a, b = diameter / 2 / np.sqrt(q), diameter / 2 * np.sqrt(q)
    reach = a * 1.15 + 2
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, h)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, w)
    out = np.zeros(shape, dtype=bool)
    if y1 <= y0 or x1 <= x0:
        return out
    u, v, _dy, _dx, _theta = _rotated_frame(rng, (y0, y1, x0, x1), cy, cx)
    phi = np.arctan2(v / b, u / a)
    wobble = np.ones_like(phi)
    for k in (2, 3, 4, 5):
        wobble += rng.uniform(0, 0.05) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    out[y0:y1, x0:x1] = np.hypot(u / a, v / b) <= wobble
    return out


def _make_microscopy(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    side = float(min(h, w))
    scale = side / 320.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)

    theta = rng.uniform(0, 2 * np.pi)
    grad = _normalise(xx * np.cos(theta) + yy * np.sin(theta))
    illum = 0.45 + 0.35 * grad + 0.2 * _smooth_noise(rng, shape, side / 2.5)
    canvas = rng.uniform(0.04, 0.1) + 0.05 * _smooth_noise(rng, shape, 20 * scale)

    n_target = int(rng.integers(15, 61))
    masks: list[np.ndarray] = []
    centres: list[tuple[float, float, float]] = []
    union = np.zeros(shape, dtype=bool)
    for _ in range(n_target):
        for _try in range(25):
            d = rng.uniform(15, 30) * scale
            if centres and rng.random() < 0.3:  # snuggle up to a neighbour
                py, px, pd = centres[int(rng.integers(len(centres)))]
                ang = rng.uniform(0, 2 * np.pi)
                dist = (pd + d) / 2 * rng.uniform(0.85, 1.0)
                cy, cx = py + dist * np.sin(ang), px + dist * np.cos(ang)
            else:
                m = 0.3 * d
                cy, cx = rng.uniform(m, h - m), rng.uniform(m, w - m)
            if not (0 <= cy < h and 0 <= cx < w):
                continue
            mask = _nucleus_mask(rng, shape, cy, cx, d)
            area = int(mask.sum())
            if area < MIN_VISIBLE_PX or (mask & union).sum() > 0.08 * area:
                continue
            masks.append(mask)
            centres.append((cy, cx, d))
            union |= mask
            break

    label_map = np.zeros(shape, dtype=np.uint16)
    for k, mask in enumerate(masks, start=1):
        label_map[mask] = k
        sl = _window(mask)
        local = mask[sl]
        brightness = rng.uniform(0.35, 1.0)
        grain = _smooth_noise(rng, local.shape, rng.uniform(2.0, 4.0) * scale)
        tex = 1.0 - rng.uniform(0.3, 0.6) * grain**1.5
        dist = ndi.distance_transform_edt(local)
        rim = 0.7 + 0.3 * np.clip(dist / (0.25 * np.sqrt(local.sum() / np.pi) + 1e-6), 0, 1)
        canvas[sl][local] = (brightness * tex * rim)[local]
    label_map = _relabel(label_map)

    canvas = canvas * illum
    canvas = ndi.gaussian_filter(canvas, 1.0 * scale)  # optics
    canvas = canvas + rng.normal(size=shape) * np.sqrt(np.maximum(canvas, 0) * 0.002 + 0.015**2)
    gray = np.clip(np.round(canvas * 255), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2), label_map


# ------------------------------------------------------------------------ public API


def _relabel(label_map: np.ndarray) -> np.ndarray:
    """Renumber labels to 1..K in first-appearance order of their ids, dropping tiny ones."""
    out = np.zeros(label_map.shape, dtype=np.uint16)
    counts = np.bincount(label_map.ravel().astype(np.int64))
    k = 0
    for lab in range(1, len(counts)):
        if counts[lab] >= MIN_VISIBLE_PX:
            k += 1
            out[label_map == lab] = k
    return out


def make_sample(
    seed: int, size: tuple[int, int] = (320, 320), kind: str = "photo"
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(rgb uint8 (H, W, 3), labels uint16 (H, W))``; 0 is background.

    Identical seeds give identical arrays (only ``np.random.default_rng(seed)`` is
    used). Label ids are contiguous ``1..K`` and every instance has at least 40
    visible pixels.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    h, w = int(size[0]), int(size[1])
    if h < 16 or w < 16:
        raise ValueError(f"size too small: {size}")
    rng = np.random.default_rng(seed)
    if kind == "photo":
        image, labels, _ = _make_photo(rng, (h, w))
        return image, labels
    if kind == "cartoon":
        return _make_cartoon(rng, (h, w))
    return _make_microscopy(rng, (h, w))


def label_map_to_masks(label_map: np.ndarray, source: str = "gt") -> list[InstanceMask]:
    """One ``InstanceMask`` (score 1.0) per non-zero label, in label order."""
    return [InstanceMask(crop, score=1.0, maskness=1.0, source=source, extra={"label": lab}, box=box,
                         shape=label_map.shape)
            for lab, crop, box in label_image_to_crops(label_map)]


def sample_seed(seed: int, index: int) -> int:
    """Independent per-image seed derived from the data set seed and the index."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def write_synthetic_dataset(
    out_dir: str | Path,
    n: int,
    *,
    seed: int = 0,
    size: tuple[int, int] = (320, 320),
    kind: str = "photo",
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write ``images/img_0000.png ...`` plus a COCO ``gt.json`` (RLE masks).

    Returns ``(image_dir, gt_json)``. Refuses (``FileExistsError``) to replace an
    existing ``gt.json`` unless ``overwrite`` is set, so a benchmark can never
    silently clobber ground truth that predictions were made against. The
    generation parameters go into the dataset's ``info`` so a reader can tell
    whether an existing folder matches what it wants. Image ``i`` is
    ``make_sample(sample_seed(seed, i), size, kind)``. With ``overwrite``, old
    ``img_NNNN.png`` files beyond the new ``n`` are deleted so the folder holds
    exactly the annotated images.
    """
    from PIL import Image

    from engine.io.atomic import atomic_save
    from engine.io.coco import build_coco_dataset, write_coco

    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    gt_json = out_dir / "gt.json"
    if gt_json.exists() and not overwrite:
        raise FileExistsError(f"{gt_json} exists; pass overwrite=True to replace it")
    image_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:  # a smaller replacement set must not leave stale images behind
        keep = {f"img_{i:04d}.png" for i in range(int(n))}
        for old in image_dir.glob("img_[0-9][0-9][0-9][0-9].png"):
            if old.name not in keep:
                old.unlink()

    results: list[ImageResult] = []
    for i in range(int(n)):
        image, labels = make_sample(sample_seed(seed, i), size=size, kind=kind)
        name = f"img_{i:04d}.png"

        def _writer(tmp: Path, image: np.ndarray = image) -> None:
            Image.fromarray(image).save(tmp, format="PNG")

        atomic_save(image_dir / name, _writer, overwrite=True, backup=False)
        results.append(
            ImageResult(
                file_name=name,
                height=int(labels.shape[0]),
                width=int(labels.shape[1]),
                instances=label_map_to_masks(labels),
            )
        )
    info = {
        "description": f"freesolo-napari synthetic {kind} images",
        "generator": "engine.synthetic.write_synthetic_dataset",
        "kind": kind,
        "seed": int(seed),
        "n": int(n),
        "size": [int(size[0]), int(size[1])],
    }
    dataset = build_coco_dataset(results, segmentation="rle", info=info)
    write_coco(gt_json, dataset, overwrite=overwrite)
    return image_dir, gt_json
