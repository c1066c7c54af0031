"""Stacks and channels of napari image layers: which plane and channel a run computes (no Qt).

An image layer whose data has axes before Y, X (and before the RGB samples) is a *stack*: each
combination of those leading axes is a plane, processed as an image of its own and named like
the engine names planes of a file (``engine.io.stacks``): ``stack.tif[z=3]``, ``movie.tif[t=1,z=0]``.
A :class:`View` says what one run computes: the layer, the plane on the layer's leading axes and
the channel. Its :attr:`View.key` is the key of everything the panel keeps per computed image
(features, the parameters of the overlay): the layer's name for a 2-D image in colour, so
2-D images are keyed as they always were, else the name with the plane and channel appended
(``stack[z=3]``, ``photo[c=1]``, ``stack[z=3][c=0]``).

Channels follow the engine's convention: "all" is colour (an RGB layer as it is; separate
channels as red/green(/blue)), channel K alone becomes grey. An RGB layer offers channels 0-2; a
layer of shape (C, Y, X) with 2 <= C <= 4 is a stack of C planes unless the user marks its first
axis as channels (the channel choice), then it is one 2-D multi-channel image.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.io.stacks import Plane, plane_name

AS_PLANES = "planes"  # channel choice of a (C, Y, X) layer kept as a stack of planes
MAX_CHANNELS = 4  # a first axis this short may be channels
_TIFF = (".tif", ".tiff")


@dataclass(frozen=True)
class Layout:
    """How a layer's array is read: its plane axes, and where its channels are."""

    leading: tuple[int, ...]  # sizes of the plane axes (before Y, X); () for a 2-D image
    channels: str = ""  # "rgb": last axis colour samples; "first": axis 0 holds channels; "": grey
    n_channels: int = 0  # channels the user can pick from (0: no choice)

    @property
    def planes(self) -> int:
        return int(np.prod(self.leading)) if self.leading else 1


@dataclass(frozen=True)
class View:
    """One image a run computes: layer ``name``, plane ``index`` on its leading axes, ``channel``."""

    name: str
    index: tuple[int, ...] = ()
    channel: int | None = None  # None: all channels (colour)
    axes: tuple[str, ...] = ()  # letters of the leading axes (lower case)

    @property
    def plane(self) -> Plane:
        return Plane(tuple(zip(self.axes, self.index)))

    @property
    def suffix(self) -> str:
        """``[z=3]``, ``[c=1]``, ``[t=0,z=2][c=1]``; '' for a 2-D image in colour."""
        return self.plane.suffix() + ("" if self.channel is None else f"[c={self.channel}]")

    @property
    def key(self) -> str:
        return self.name + self.suffix

    def file_name(self, base: str) -> str:
        """The COCO file name of this plane of the file ``base`` (channels are not part of it)."""
        return plane_name(base, self.plane)


# ---- layout and channels ---------------------------------------------------------------------
def layer_array(layer):
    """The layer's full-resolution array (multiscale layers: their first level)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def may_be_channels(layer) -> bool:
    """A grey (C, Y, X) layer with 2 <= C <= 4: the user may mark its first axis as channels."""
    shape = tuple(layer_array(layer).shape)
    return not layer.rgb and len(shape) == 3 and 2 <= shape[0] <= MAX_CHANNELS


def channel_choice(state, layer):
    """The layer's channel choice: None (all, colour), K, or AS_PLANES (the default of a (C, Y, X) layer)."""
    default = AS_PLANES if may_be_channels(layer) else None
    return state.channels.get(layer.name, default)


def layout_of(layer, choice=None) -> Layout:
    """How ``layer`` is read with channel ``choice``; ValueError if it has no Y, X plane."""
    shape = tuple(layer_array(layer).shape)
    if layer.rgb:
        if len(shape) < 3:
            raise ValueError(f"layer '{layer.name}' is not an image (shape {shape})")
        return Layout(shape[:-3], "rgb", 3)
    if len(shape) < 2:
        raise ValueError(f"layer '{layer.name}' is not a 2D image or a stack of them (shape {shape})")
    if may_be_channels(layer) and choice != AS_PLANES:
        return Layout((), "first", shape[0])
    return Layout(shape[:-2], "", shape[0] if may_be_channels(layer) else 0)


def plane_shape(layer, layout: Layout) -> tuple[int, int]:
    """(H, W) of one plane of ``layer`` read with ``layout`` (a layer of channels first: its last two axes)."""
    shape = tuple(int(n) for n in layer_array(layer).shape)
    return shape[-3:-1] if layout.channels == "rgb" else shape[-2:]


def channel_items(layer) -> list[tuple[str, object]]:
    """(text, choice) of the channel combo for ``layer``; [] when it has no channel to choose."""
    if not layer.rgb and not may_be_channels(layer):
        return []
    n = 3 if layer.rgb else int(layer_array(layer).shape[0])
    items = [] if layer.rgb else [("none: a stack of planes", AS_PLANES)]
    return items + [("all (colour)", None)] + [(str(k), k) for k in range(n)]


def plane_image(data, layout: Layout, index: tuple[int, ...] = (), channel: int | None = None) -> np.ndarray:
    """uint8 RGB (H, W, 3) of one plane (only that plane is read, e.g. from a dask array)."""
    from engine.io.images import to_uint8_rgb

    if len(index) != len(layout.leading):
        raise ValueError(f"plane {index} does not fit a stack of shape {layout.leading}")
    arr = np.asarray(data[tuple(index)] if index else data)
    if channel is not None and not 0 <= channel < max(layout.n_channels, 1):
        raise ValueError(f"channel {channel} does not exist (the image has {layout.n_channels})")
    if layout.channels == "rgb":
        rgb = to_uint8_rgb(arr)
        return rgb if channel is None else np.repeat(rgb[..., channel: channel + 1], 3, axis=2)
    if layout.channels == "first":
        return to_uint8_rgb(np.moveaxis(arr, 0, -1), color=False) if channel is None else to_uint8_rgb(arr[channel])
    return to_uint8_rgb(arr)


# ---- axis letters and the plane on screen ----------------------------------------------------
def default_letters(n: int) -> tuple[str, ...]:
    """'z' for one leading axis, 't', 'z' for two; more get 'p', 'q', ... in front."""
    return tuple("pqrsuvw"[: max(n - 2, 0)]) + ("t", "z")[-n:] if n else ()


def axis_letters(layer, leading: tuple[int, ...], dims_labels=()) -> tuple[str, ...]:
    """Letters of the leading axes: the TIFF's own (as ``freesolo freemask`` names the file's planes),
    else napari's axis labels when they are letters, else :func:`default_letters`."""
    n = len(leading)
    path = getattr(getattr(layer, "source", None), "path", None)
    if n and path and Path(path).suffix.lower() in _TIFF:
        letters = _tiff_letters(Path(path), leading)
        if letters:
            return letters
    labels = [str(a).lower() for a in tuple(dims_labels)[-layer.ndim:][:n]] if n else []
    if len(labels) == n and len(set(labels)) == n and all(re.fullmatch("[a-wz]", a) for a in labels):
        return tuple(labels)
    return default_letters(n)


def _tiff_letters(path: Path, leading: tuple[int, ...]) -> tuple[str, ...]:
    from engine.io.images import read_tiff

    try:
        axes = read_tiff(path).plane_axes()
    except Exception:  # noqa: BLE001 unreadable here: napari's labels decide
        return ()
    if tuple(axes.values()) != tuple(leading):
        return ()
    return tuple(a.lower() for a in axes)


def current_index(viewer, layer, n: int) -> tuple[int, ...]:
    """The plane of ``layer``'s first ``n`` axes that napari's dims sliders show."""
    if not n:
        return ()
    shape = tuple(layer_array(layer).shape)
    point = layer.world_to_data(viewer.dims.point)[:n]
    return tuple(int(min(max(round(float(p)), 0), size - 1)) for p, size in zip(point, shape[:n]))


def current_view(viewer, layer, state) -> View:
    """What Run computes for ``layer`` now: the plane on screen, with the layer's channel choice.

    The axis letters are worked out once per layer and kept in ``state.axes`` (GUI thread)."""
    choice = channel_choice(state, layer)
    layout = layout_of(layer, choice)
    axes = layer_axes(viewer, layer, layout, state)
    channel = choice if isinstance(choice, int) else None
    return View(layer.name, current_index(viewer, layer, len(layout.leading)), channel, axes)


def layer_axes(viewer, layer, layout: Layout, state) -> tuple[str, ...]:
    known = state.axes.get(layer.name)
    if known is None or len(known) != len(layout.leading):
        known = state.axes[layer.name] = axis_letters(layer, layout.leading, viewer.dims.axis_labels)
    return known


def all_views(viewer, layer, state) -> tuple[Layout, list[View]]:
    """The layout of ``layer`` and a view of each of its planes (in C order), with its channel choice."""
    first = current_view(viewer, layer, state)
    layout = layout_of(layer, channel_choice(state, layer))
    combos = itertools.product(*(range(n) for n in layout.leading))
    return layout, [View(first.name, tuple(c), first.channel, first.axes) for c in combos]


def plane_view(viewer, layer, state, plane: Plane) -> View | None:
    """The view of ``layer`` that shows ``plane`` of its file (``movie.tif[t=2]`` -> t = 2), with the
    layer's channel choice; None when the layer has no such plane (other axes, out of range)."""
    first = current_view(viewer, layer, state)
    leading = layout_of(layer, channel_choice(state, layer)).leading
    wanted = dict(plane.index)
    if not wanted or set(wanted) != set(first.axes):
        return None
    index = tuple(wanted[a] for a in first.axes)
    if any(not 0 <= i < n for i, n in zip(index, leading)):
        return None
    return View(first.name, index, first.channel, first.axes)
