"""What the panel knows between events, without Qt: one object, written on the GUI thread only.

Workers never write here: they return their results (``compute.Computed``, the items a batch
yields) and the GUI-thread callbacks that receive them store what they carry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class PanelState:
    image: str = ""  # name of the image layer the panel works on
    # Per computed image, keyed by ``planes.View.key``: the layer name for a 2-D image in colour,
    # else the name with its plane and channel (``stack[z=3]``, ``photo[c=1]``).
    features: dict[str, tuple[np.ndarray, object]] = field(default_factory=dict)  # key -> (RGB input, Features)
    params_shown: dict[str, object] = field(default_factory=dict)  # key -> FreeMaskParams of its overlay
    generators_shown: dict[str, object] = field(default_factory=dict)  # key -> GeneratorConfig of its overlay
    choices: dict[str, object] = field(default_factory=dict)  # key -> AutoChoices of its overlay (engine)
    views: dict[str, object] = field(default_factory=dict)  # key -> planes.View, for keys that are no layer name
    # Per image layer:
    automatic: dict[str, np.ndarray] = field(default_factory=dict)  # last automatic labels, to mark user edits
    channels: dict[str, object] = field(default_factory=dict)  # layer -> channel choice (see planes.channel_choice)
    axes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # layer -> letters of its plane axes
    extractor: object | None = None  # the FeatureExtractor in use (built lazily by a worker)
    generation: int = 0  # bumped when the backbone or device changes: older results are not kept
    tiling: tuple[int | None, int] = (None, 0)  # (tile px, overlap px) the kept features were made with; off: (None, 0)

    def store_features(self, key: str, image: np.ndarray, feats, generation: int | None = None, view=None,
                       tiling: tuple[int | None, int] | None = None) -> bool:
        """Keep ``key``'s features unless they were computed for an earlier backbone or device, or
        (``tiling`` given) with another tiling than the one chosen now.

        ``view`` (a ``planes.View``) says which layer, plane and channel a key other than a layer name is."""
        if generation is not None and generation != self.generation:
            return False
        if tiling is not None and tuple(tiling) != tuple(self.tiling):
            return False
        self.features[key] = (image, feats)
        if view is not None and key != view.name:
            self.views[key] = view
        return True

    def image_of(self, key: str) -> str:
        """The image layer a key belongs to."""
        view = self.views.get(key)
        return view.name if view is not None else key

    def keys_of(self, name: str) -> list[str]:
        """Every key (plane, channel) kept for image layer ``name``."""
        return [k for k in {*self.features, *self.params_shown} if self.image_of(k) == name]

    def adopt_extractor(self, extractor, generation: int) -> None:
        """The extractor a worker built becomes the panel's, if none is in use and the model is unchanged."""
        if extractor is not None and self.extractor is None and generation == self.generation:
            self.extractor = extractor

    def reset_model(self) -> None:
        """Another backbone or device: the next run builds its extractor and recomputes features."""
        self.extractor = None
        self.features.clear()
        self.generation += 1

    def set_tiling(self, tiling: tuple[int | None, int]) -> bool:
        """Another tiling: the kept features were made with the old one and are dropped (the extractor
        stays). Returns whether it changed."""
        if tuple(tiling) == tuple(self.tiling):
            return False
        self.tiling = tuple(tiling)
        self.features.clear()
        return True

    def forget_closed(self, open_names) -> None:
        """Images no longer open free their features and parameters."""
        open_names = set(open_names)
        for gone in [k for k in {*self.features, *self.params_shown} if self.image_of(k) not in open_names]:
            self._drop(gone)
        for per_layer in (self.channels, self.axes):
            for name in [n for n in per_layer if n not in open_names]:
                per_layer.pop(name, None)

    def forget(self, name: str) -> None:
        """An image taken off the screen (the folder browser moved on)."""
        for key in self.keys_of(name):
            self.features.pop(key, None)
            self.choices.pop(key, None)
            self.views.pop(key, None)
        self.features.pop(name, None)
        self.automatic.pop(name, None)

    def _drop(self, key: str) -> None:
        for per_key in (self.features, self.params_shown, self.generators_shown, self.choices, self.views):
            per_key.pop(key, None)
