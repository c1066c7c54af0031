"""Stacks: 3-D, time-lapse and multi-channel images, processed plane by plane.

A TIFF whose first series has axes beyond Y, X and its channels (Z, T, pages, ...) is a stack;
each combination of those axes is a *plane*, processed as an image of its own and named
``FILE[z=3]`` or ``FILE[t=1,z=3]`` (axis letters in lower case, 0-based), so every COCO image
maps back to its file and plane. A 2-D image is one plane with no suffix.

Multi-channel images (axis C, e.g. fluorescence) are shown as colour by default (2 channels:
red/green; more: the first 3); ``channel=K`` takes channel K alone, as grey. For RGB files
``channel`` picks R, G or B.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from engine.io.images import _TIFF_EXTENSIONS, ImageLoadError, load_image, read_tiff

_SUFFIX = re.compile(r"^(?P<name>.+)\[(?P<index>[a-z]=\d+(?:,[a-z]=\d+)*)\]$")


@dataclass(frozen=True)
class Plane:
    """Where a plane sits in its stack: ((axis, index), ...) in the file's axis order; () for 2-D."""

    index: tuple[tuple[str, int], ...] = ()

    def suffix(self) -> str:
        return "[" + ",".join(f"{a}={k}" for a, k in self.index) + "]" if self.index else ""

    def tiff_index(self) -> dict[str, int]:
        return {a.upper(): k for a, k in self.index}


def plane_name(name: str, plane: Plane) -> str:
    """The COCO file name of a plane: ``stack.tif[z=3]``."""
    return name + plane.suffix()


def split_plane_name(file_name: str) -> tuple[str, Plane]:
    """``stack.tif[t=1,z=3]`` -> (``stack.tif``, Plane((("t", 1), ("z", 3)))); other names unchanged."""
    m = _SUFFIX.match(file_name)
    if m is None:
        return file_name, Plane()
    pairs = tuple((a, int(k)) for a, k in (part.split("=") for part in m.group("index").split(",")))
    return m.group("name"), Plane(pairs)


def _pick_channel(image: np.ndarray, channel: int | None, path: Path) -> np.ndarray:
    if channel is None:
        return image
    if not 0 <= channel < 3:
        raise ImageLoadError(path, f"channel {channel} does not exist (the image has 3: R, G, B)")
    return np.repeat(image[..., channel: channel + 1], 3, axis=2)


def _tiff(path: Path):
    """The TIFF's data, or None when the file is not a TIFF tifffile can read (PIL then decides)."""
    if path.suffix.lower() not in _TIFF_EXTENSIONS or not path.is_file():
        return None
    try:
        return read_tiff(path)
    except ImageLoadError:
        raise
    except MemoryError:
        raise ImageLoadError(path, "not enough memory to decode the TIFF") from None
    except Exception:
        return None


def planes_of(path: str | Path, channel: int | None = None) -> Iterator[tuple[Plane, np.ndarray]]:
    """(plane, uint8 RGB image) for every plane of an image file, in the file's axis order.

    Raises :class:`ImageLoadError` (naming the file) for unreadable files or a channel that does
    not exist.
    """
    path = Path(path)
    data = _tiff(path)
    if data is None:
        yield Plane(), _pick_channel(load_image(path), channel, path)
        return
    axes = data.plane_axes()
    for combo in itertools.product(*(range(n) for n in axes.values())):
        plane = Plane(tuple((a.lower(), k) for a, k in zip(axes, combo)))
        try:
            yield plane, data.plane(plane.tiff_index(), channel)
        except ValueError as exc:
            raise ImageLoadError(path, str(exc)) from None


def load_plane(path: str | Path, plane: Plane, channel: int | None = None) -> np.ndarray:
    """One plane of an image file (a 2-D file has only ``Plane()``)."""
    path = Path(path)
    data = _tiff(path)
    if data is None:
        if plane.index:
            raise ImageLoadError(path, f"has no plane {plane.suffix()} (it is a 2-D image)")
        return _pick_channel(load_image(path), channel, path)
    try:
        return data.plane(plane.tiff_index(), channel)
    except ValueError as exc:
        raise ImageLoadError(path, str(exc)) from None


def content_key(digest: str, name: str, channel: int | None) -> str:
    """The feature-cache key of one plane: the file's content hash, its plane and channel."""
    return digest + split_plane_name(name)[1].suffix() + ("" if channel is None else f"[c={channel}]")
