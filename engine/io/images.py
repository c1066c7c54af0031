"""Robust image loading: any common file becomes a uint8 (H, W, 3) RGB array.

Users point the tool at folders of whatever they have: phone JPEGs with EXIF
rotation, 16-bit microscopy TIFFs, palette GIFs, cut-outs with alpha, the odd
corrupt file. The model needs one thing (8-bit RGB), and a batch run must report a
bad file in one readable line instead of dying on a PIL traceback.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageLoadError",
    "NoImagesError",
    "file_sha1",
    "find_root",
    "list_images",
    "load_image",
    "relative_name",
    "to_uint8_rgb",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp",
)
_TIFF_EXTENSIONS = (".tif", ".tiff")
# Read a whole TIFF series only up to this size; beyond it only the first page is read
# (a multi-GB z-stack should not be pulled into memory to show its first plane).
_TIFF_FULL_READ_BYTES = 1 << 30
# Percentile estimates need no more than this many samples.
_MAX_PERCENTILE_SAMPLES = 4_000_000


class ImageLoadError(ValueError):
    """A file could not be turned into an image; ``str()`` is one line naming it."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = " ".join(str(reason).split())
        super().__init__(f"cannot read '{self.path}': {self.reason}")


class NoImagesError(ValueError):
    """The inputs contained no usable image at all."""


# --------------------------------------------------------------------------- scaling


def _robust_range(values: np.ndarray) -> tuple[float, float]:
    """0.5..99.5 percentile range of the finite values, falling back to min..max."""
    flat = values.reshape(-1)
    if flat.size > _MAX_PERCENTILE_SAMPLES:
        flat = flat[:: flat.size // _MAX_PERCENTILE_SAMPLES + 1]
    flat = flat[np.isfinite(flat)] if flat.dtype.kind == "f" else flat
    if flat.size == 0:
        return 0.0, 0.0
    lo, hi = np.percentile(flat.astype(np.float64), [0.5, 99.5])
    if not hi > lo:  # mostly-constant image with a few outliers
        lo, hi = float(flat.min()), float(flat.max())
    return float(lo), float(hi)


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map arbitrary numeric data to 0..255; constant (or all-NaN) data gives zeros."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    lo, hi = _robust_range(values)
    if not hi > lo:
        return np.zeros(values.shape, np.uint8)
    out = (values.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    out = np.nan_to_num(out, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _alpha_to_unit(alpha: np.ndarray) -> np.ndarray:
    """Alpha in 0..1 from its storage type (integer: by dtype max; float: assumed 0..1)."""
    if alpha.dtype.kind in "ui":
        return alpha.astype(np.float32) / np.float32(np.iinfo(alpha.dtype).max)
    if alpha.dtype == np.bool_:
        return alpha.astype(np.float32)
    return np.clip(np.nan_to_num(alpha.astype(np.float32)), 0.0, 1.0)


def _over_white(rgb8: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite over white: the transparent background of a cut-out reads as paper.

    Black would create strong artificial edges around dark objects and make the
    background look like part of a dark scene; white is what viewers show.
    """
    a = _alpha_to_unit(alpha)[..., None]
    out = rgb8.astype(np.float32) * a + np.float32(255.0) * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_uint8_rgb(array: np.ndarray, *, color: bool = True) -> np.ndarray:
    """Turn a (H, W) or channel-last (H, W, C) array into uint8 (H, W, 3) RGB.

    ``color`` says the last axis holds colour samples (RGB/RGBA/gray+alpha, scaled
    jointly so colour balance is kept). Otherwise the channels are separate
    measurements (e.g. fluorescence): each is scaled on its own, 2 channels go to
    red/green and more than 3 keep the first 3.
    """
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        gray = _scale_to_uint8(arr)
        return np.repeat(gray[..., None], 3, axis=2)
    if arr.ndim != 3:
        raise ValueError(f"expected a 2-D or 3-D array, got shape {arr.shape}")
    n = arr.shape[2]
    if color and n in (2, 4):  # gray+alpha or RGBA
        base = to_uint8_rgb(arr[..., : n - 1], color=True)
        return _over_white(base, arr[..., n - 1])
    if color and n == 3:
        return _scale_to_uint8(arr)
    if n == 2:
        planes = [_scale_to_uint8(arr[..., 0]), _scale_to_uint8(arr[..., 1])]
        planes.append(np.zeros(arr.shape[:2], np.uint8))
        return np.stack(planes, axis=2)
    return np.stack([_scale_to_uint8(arr[..., i]) for i in range(3)], axis=2)


# --------------------------------------------------------------------------- loading


def to_unit_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float64 in [0, 1] from grey, RGB or RGBA of any numeric dtype, for drawing and the
    classical baselines: uint8 / 255, uint16 / 65535, floats in [0, 1] as they are, anything else
    stretched min..max (NaN as 0). Unlike ``to_uint8_rgb`` (the loader's robust percentile
    stretch), values are never clipped."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise ValueError(f"expected (H, W) or (H, W, C) image, got shape {img.shape}")
    if img.shape[2] == 4:
        img = img[..., :3]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    if img.shape[2] != 3:
        raise ValueError(f"expected 1, 3 or 4 channels, got {img.shape[2]}")
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float64) / 65535.0
    f = np.nan_to_num(img.astype(np.float64))
    lo, hi = float(f.min()), float(f.max())
    if lo >= 0.0 and hi <= 1.0:
        return f
    return (f - lo) / (hi - lo) if hi > lo else np.zeros_like(f)


def _check_size(path: Path, height: int, width: int, max_pixels: int, min_side: int) -> None:
    if height * width > max_pixels:
        raise ImageLoadError(
            path,
            f"image is too large ({width}x{height} = {height * width:,} pixels; "
            f"the limit is {max_pixels:,})",
        )
    if min(height, width) < min_side:
        raise ImageLoadError(
            path,
            f"image is too small ({width}x{height} pixels; each side must be at least {min_side})",
        )


def _apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply a TIFF/EXIF orientation code (same meaning as PIL's exif_transpose)."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(arr, k=-1)
    if orientation == 7:
        return np.rot90(arr.swapaxes(0, 1), k=2)
    if orientation == 8:
        return np.rot90(arr, k=1)
    return arr


@dataclass
class TiffData:
    """A TIFF's first series as read: the array, its axes (tifffile letters) and display tags."""

    array: np.ndarray
    axes: str
    photometric: int
    orientation: int

    @property
    def channel_axis(self) -> str | None:
        """'S' (colour samples) or 'C' (separate channels, e.g. fluorescence), if any."""
        return "S" if "S" in self.axes else ("C" if "C" in self.axes else None)

    def plane_axes(self) -> dict[str, int]:
        """Every axis that is neither Y, X nor the channel axis (Z, T, pages...) with its length."""
        return {ax: n for ax, n in zip(self.axes, self.array.shape) if ax not in ("Y", "X", self.channel_axis)}

    def channels(self) -> int:
        ax = self.channel_axis
        return int(self.array.shape[self.axes.index(ax)]) if ax else 1

    def plane(self, index: dict[str, int] | None = None, channel: int | None = None) -> np.ndarray:
        """uint8 RGB of one plane (missing axes: 0); ``channel`` picks one channel as grey."""
        index = index or {}
        ax = self.channel_axis
        unknown = [a for a in index if a not in self.plane_axes()]
        if unknown:
            axes = ", ".join(a.lower() for a in self.plane_axes()) or "none: it is a single plane"
            raise ValueError(f"has no plane {unknown[0].lower()}={index[unknown[0]]} (its plane axes: {axes})")
        if channel is not None and not 0 <= channel < self.channels():
            raise ValueError(f"channel {channel} does not exist (the image has {self.channels()})")
        take: list[int | slice] = []
        kept = ""
        for a, n in zip(self.axes, self.array.shape):
            if a in ("Y", "X") or (a == ax and channel is None):
                take.append(slice(None))
                kept += a
            elif a == ax:
                take.append(channel)
            else:
                k = int(index.get(a, 0))
                if not 0 <= k < n:
                    raise ValueError(f"plane {a}={k} does not exist (axis {a} has {n})")
                take.append(k)
        arr = self.array[tuple(take)]
        order = [kept.index("Y"), kept.index("X")] + ([kept.index(ax)] if ax and ax in kept else [])
        arr = _apply_orientation(np.transpose(arr, order), self.orientation)
        if self.photometric == 0 and arr.ndim == 2:  # MINISWHITE: 0 is white, so invert
            arr = np.iinfo(arr.dtype).max - arr if arr.dtype.kind == "u" else arr.max() - arr
        return to_uint8_rgb(np.ascontiguousarray(arr), color=ax == "S" and channel is None)


def read_tiff(path: Path, max_pixels: int = 400_000_000, min_side: int = 8) -> TiffData:
    """The first series of a TIFF (only its first page when the series is over 1 GiB)."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes, shape = series.axes, tuple(series.shape)
        if "Y" not in axes or "X" not in axes:
            raise ImageLoadError(path, f"TIFF has no image plane (axes {axes!r}, shape {shape})")
        _check_size(path, shape[axes.index("Y")], shape[axes.index("X")], max_pixels, min_side)
        page = tif.pages[0]
        if series.size * series.dtype.itemsize <= _TIFF_FULL_READ_BYTES:
            arr = series.asarray()
        else:
            arr, axes = page.asarray(), page.axes
        photometric = int(getattr(page, "photometric", 1) or 1)
        orientation_tag = page.tags.get(274)
        orientation = int(orientation_tag.value) if orientation_tag is not None else 1
    return TiffData(arr, axes, photometric, orientation)


def _load_tiff(path: Path, max_pixels: int, min_side: int) -> np.ndarray:
    """First plane of the first series; S (samples) is colour, C is separate channels."""
    return read_tiff(path, max_pixels, min_side).plane()


def _pil_to_array(im: Image.Image) -> tuple[np.ndarray, bool]:
    """Array plus whether its last axis holds colour samples (as opposed to gray)."""
    mode = im.mode
    if mode in ("RGB", "L"):
        return np.asarray(im), True
    if mode == "1":
        return np.asarray(im.convert("L")), True
    if mode in ("RGBA", "LA"):
        return np.asarray(im), True
    if mode in ("RGBa", "La"):
        return np.asarray(im.convert("RGBA" if mode == "RGBa" else "LA")), True
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        return np.asarray(im.convert("RGBA" if has_alpha else "RGB")), True
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im)
        if arr.dtype.byteorder not in ("=", "|"):
            arr = arr.astype(arr.dtype.newbyteorder("="))
        return arr, True
    return np.asarray(im.convert("RGB")), True  # CMYK, YCbCr, LAB, HSV, ...


def _load_pil(path: Path, max_pixels: int, min_side: int) -> np.ndarray:
    saved_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our own max_pixels check replaces PIL's bomb guard
    try:
        try:
            im = Image.open(path)
        except UnidentifiedImageError:
            raise ImageLoadError(path, "not an image file (cannot identify image file)") from None
        except PermissionError:
            raise ImageLoadError(path, "permission denied") from None
        except Exception as exc:  # OSError for truncated headers, or a plugin choking
            raise ImageLoadError(path, f"corrupt or truncated image ({exc})") from None
        with im:
            width, height = im.size
            # EXIF orientations 5-8 swap the sides, which does not change either check.
            _check_size(path, height, width, max_pixels, min_side)
            try:
                im.load()
                rotated = ImageOps.exif_transpose(im)
                arr, color = _pil_to_array(rotated)
            except MemoryError:
                raise ImageLoadError(path, f"not enough memory to decode {width}x{height}") from None
            except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, EOFError...
                raise ImageLoadError(path, f"corrupt or truncated image ({exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved_limit
    return to_uint8_rgb(arr, color=color)


def load_image(
    path: str | os.PathLike[str], *, max_pixels: int = 400_000_000, min_side: int = 8
) -> np.ndarray:
    """Load any supported image as uint8 (H, W, 3) RGB, or raise :class:`ImageLoadError`.

    8-bit data is kept as stored (it is already display-scaled); 16-bit, 32-bit and
    float data is stretched by its 0.5..99.5 percentiles. TIFFs go through tifffile
    (first plane of the first series), everything else through PIL with EXIF
    orientation applied. A missing file is an ``ImageLoadError`` too, so a batch can
    skip it like any other unreadable file.
    """
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(path, "file does not exist")
    if path.is_dir():
        raise ImageLoadError(path, "is a folder, not an image file")
    if path.suffix.lower() in _TIFF_EXTENSIONS:
        try:
            return _load_tiff(path, max_pixels, min_side)
        except ImageLoadError:
            raise
        except MemoryError:
            raise ImageLoadError(path, "not enough memory to decode the TIFF") from None
        except Exception as tiff_exc:  # not a TIFF after all, or a codec tifffile lacks
            try:
                return _load_pil(path, max_pixels, min_side)
            except ImageLoadError as pil_exc:
                if "not an image file" in pil_exc.reason:
                    raise ImageLoadError(path, f"not a readable TIFF ({tiff_exc})") from None
                raise
    return _load_pil(path, max_pixels, min_side)


# --------------------------------------------------------------------------- listing


def _natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """'img2' sorts before 'img10'; case-insensitive so listings look like file browsers."""
    parts = re.split(r"(\d+)", name.casefold())
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p != "")


def _path_key(rel: Path) -> tuple[tuple[tuple[int, int | str], ...], ...]:
    return tuple(_natural_key(part) for part in rel.parts)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _check_extension(path: Path) -> str | None:
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return None
    if path.suffix:
        return f"not an image extension ({path.suffix})"
    return "no file extension"


def _scan_folder(
    folder: Path, recursive: bool
) -> tuple[list[Path], list[tuple[Path, str]]]:
    images: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError as exc:
            skipped.append((current, f"cannot list folder ({exc.strerror or exc})"))
            continue
        for entry in entries:
            p = Path(entry.path)
            if _is_hidden(entry.name):
                skipped.append((p, "hidden file" if not entry.is_dir() else "hidden folder"))
                continue
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if recursive:
                    stack.append(p)
                else:
                    skipped.append((p, "sub-folder (not searched without recursive)"))
                continue
            reason = _check_extension(p)
            if reason is None:
                images.append(p)
            else:
                skipped.append((p, reason))
    images.sort(key=lambda q: _path_key(q.relative_to(folder)))
    skipped.sort(key=lambda item: _path_key(item[0].relative_to(folder)))
    return images, skipped


def list_images(
    inputs: Sequence[str | os.PathLike[str]], *, recursive: bool = False
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand files and folders into (image paths, skipped (path, reason)).

    Folders are listed in natural name order; hidden entries (``.DS_Store``,
    macOS ``._x.png`` resource forks) and non-image extensions are skipped with a
    reason. A file named explicitly is taken even if hidden. Duplicates are dropped.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    images: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for inp in inputs:
        p = Path(inp)
        if not p.exists():
            raise FileNotFoundError(errno.ENOENT, "no such file or folder", str(p))
        if p.is_dir():
            found, skip = _scan_folder(p, recursive)
        else:
            reason = _check_extension(p)
            found, skip = ([p], []) if reason is None else ([], [(p, reason)])
        skipped.extend(skip)
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                images.append(f)
    if not images:
        names = ", ".join(f"'{Path(i)}'" for i in inputs) or "(no inputs)"
        exts = ", ".join(IMAGE_EXTENSIONS)
        detail = f"; skipped {len(skipped)} other entries" if skipped else ""
        raise NoImagesError(f"no images found in {names} (looked for {exts}){detail}")
    return images, skipped


def relative_name(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> str:
    """POSIX path of ``path`` relative to ``root``: the COCO ``file_name``.

    ``root`` is the input folder, or the file's parent for a file named on its own.
    """
    p, r = Path(path), Path(root)
    for a, b in ((p, r), (p.absolute(), r.absolute()), (p.resolve(), r.resolve())):
        try:
            return a.relative_to(b).as_posix()
        except ValueError:
            continue
    raise ValueError(f"'{p}' is not inside '{r}'")


def find_root(
    path: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]]
) -> Path:
    """The input folder that contains ``path`` (for :func:`relative_name`), else its parent."""
    p = Path(path).absolute()
    best: Path | None = None
    for inp in inputs:
        r = Path(inp)
        if r.is_dir():
            ra = r.absolute()
            if p.is_relative_to(ra) and (best is None or len(ra.parts) > len(best.absolute().parts)):
                best = r
    return best if best is not None else Path(path).parent


def file_sha1(path: str | os.PathLike[str], *, chunk_size: int = 1 << 20) -> str:
    """SHA-1 of the file contents, streamed (cache key; not for security)."""
    h = hashlib.sha1(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()
