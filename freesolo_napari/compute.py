"""Worker bodies of Free Mask runs (no Qt, no panel state): they compute and return, never store.

A job gets an :class:`ExtractorSource`, made on the GUI thread: the extractor in use, or how to
build one. The job builds it at most once, and its results carry it back, so the GUI-thread
callback decides whether the panel keeps it (``PanelState.adopt_extractor``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from freesolo_napari.folder import extract_features
from freesolo_napari.layers import FreeMaskUpdate, freemask_update


class ExtractorSource:
    """The extractor for one job: ``extractor`` if the panel has one, else ``build()`` on first use.

    Made on the GUI thread, then used by that job's worker only.
    """

    def __init__(self, extractor, build: Callable[[], object], generation: int):
        self.extractor = extractor
        self.build = build
        self.generation = generation

    def get(self):
        if self.extractor is None:
            self.extractor = self.build()
        return self.extractor


@dataclass
class Computed:
    """One image's features and Free Mask update, as a worker returns them."""

    update: FreeMaskUpdate
    image: np.ndarray
    features: object  # engine Features
    extractor: object  # the FeatureExtractor that computed them
    generation: int  # PanelState.generation when the job started

    @property
    def name(self) -> str:
        return self.update.name


def compute_update(source: ExtractorSource, name: str, image: np.ndarray, params, path: str | None = None) -> Computed:
    """Features (from the on-disk cache for images loaded from a file by this plugin) + Free Mask."""
    feats = extract_features(source.get(), image, path)
    return Computed(freemask_update(name, feats, params, image), image, feats, source.extractor, source.generation)


def compute_many(source: ExtractorSource, jobs, params):
    """Generator: one image after the other; yields (done, total, name, Computed or None, error or None)."""
    for i, (name, image, path) in enumerate(jobs, start=1):
        try:
            computed = compute_update(source, name, image, params, path)
        except (OSError, RuntimeError, ValueError) as exc:
            yield i, len(jobs), name, None, str(exc)
            continue
        yield i, len(jobs), name, computed, None
