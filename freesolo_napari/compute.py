"""Worker bodies of Free Mask runs, with any other generators merged in (no Qt, no panel state):
they compute and return, never store.

A job gets an :class:`ExtractorSource`, made on the GUI thread: the extractor in use, or how to
build one, and the tiling its features are computed with. The job builds the extractor at most
once, and its results carry it back, so the GUI-thread callback decides whether the panel keeps
it (``PanelState.adopt_extractor``) and its features (``PanelState.store_features``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from freesolo_napari.folder import extract_features
from freesolo_napari.layers import FreeMaskUpdate, freemask_update


class ExtractorSource:
    """The extractor for one job: ``extractor`` if the panel has one, else ``build()`` on first use;
    ``tiling``: (tile px or None, overlap px), as ``freesolo freemask --tile/--tile-overlap``.

    Made on the GUI thread, then used by that job's worker only.
    """

    def __init__(self, extractor, build: Callable[[], object], generation: int,
                 tiling: tuple[int | None, int] = (None, 0)):
        self.extractor = extractor
        self.build = build
        self.generation = generation
        self.tiling = tiling

    def get(self):
        if self.extractor is None:
            self.extractor = self.build()
        return self.extractor


@dataclass
class Computed:
    """One image's features and Free Mask update, as a worker returns them."""

    update: FreeMaskUpdate
    image: np.ndarray
    features: object  # engine Features, or TiledFeatures (engine/generators/tiling.py)
    extractor: object  # the FeatureExtractor that computed them
    generation: int  # PanelState.generation when the job started
    tiling: tuple[int | None, int] = (None, 0)  # the (tile, overlap) they were computed with

    @property
    def name(self) -> str:
        return self.update.name

    @property
    def key(self) -> str:
        """The panel state's key: the layer name, or with its plane and channel (``planes.View.key``)."""
        return self.update.key

    @property
    def view(self):
        return self.update.view


def compute_update(source: ExtractorSource, name: str, image: np.ndarray, params, path: str | None = None,
                   view=None, cached=None, generators=None) -> Computed:
    """Features (``cached``, else from the on-disk cache for images loaded from a file by this plugin,
    else the backbone; in windows with the source's tiling) + the ``generators``' masks (None: Free
    Mask alone). ``view`` (``planes.View``) is the plane and channel ``image`` is."""
    if cached is not None:
        feats = cached
    else:  # a plane or one channel of the file: its own cache entry
        feats = extract_features(source.get(), image, path, key_suffix=view.suffix if view is not None else "",
                                 tiling=source.tiling)
    return Computed(freemask_update(name, feats, params, image, view, generators), image, feats, source.extractor,
                    source.generation, source.tiling)


def compute_view(source: ExtractorSource, data, layout, view, params, path: str | None = None,
                 generators=None) -> Computed:
    """:func:`compute_update` of ``view``'s plane and channel, read from ``data`` (the layer's array) here,
    in the worker: converting a very large image to 8-bit RGB takes seconds."""
    from freesolo_napari.planes import plane_image

    image = plane_image(data, layout, view.index, view.channel)
    return compute_update(source, view.name, image, params, path, view, generators=generators)


def compute_many(source: ExtractorSource, jobs, params, generators=None):
    """Generator: one image after the other; yields (done, total, name, Computed or None, error or None).

    A job is (name, image, path) or (name, image, path, view)."""
    for i, (name, image, path, *view) in enumerate(jobs, start=1):
        try:
            computed = compute_update(source, name, image, params, path, view[0] if view else None,
                                      generators=generators)
        except (OSError, RuntimeError, ValueError) as exc:
            yield i, len(jobs), name, None, str(exc)
            continue
        yield i, len(jobs), name, computed, None


def compute_planes(source: ExtractorSource, data, layout, views, params, cached: dict, path: str | None = None,
                   generators=None):
    """Generator: every plane of a stack, one after the other (Cancel stops between two planes).

    Each plane is read from ``data`` (the layer's array) here, in the worker; planes whose
    features the panel has (``cached``: key -> (image, features)) get post-processing only.
    Yields (done, total, plane key, Computed or None, error or None).
    """
    from freesolo_napari.planes import plane_image

    for i, view in enumerate(views, start=1):
        try:
            known = cached.get(view.key)
            image = known[0] if known is not None else plane_image(data, layout, view.index, view.channel)
            computed = compute_update(source, view.name, image, params, path, view,
                                      known[1] if known is not None else None, generators)
        except (OSError, RuntimeError, ValueError) as exc:
            yield i, len(views), view.key, None, str(exc)
            continue
        yield i, len(views), view.key, computed, None
