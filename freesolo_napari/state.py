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
    features: dict[str, tuple[np.ndarray, object]] = field(default_factory=dict)  # image -> (image, Features)
    automatic: dict[str, np.ndarray] = field(default_factory=dict)  # last automatic labels, to mark user edits
    params_shown: dict[str, object] = field(default_factory=dict)  # image -> FreeMaskParams of its overlay
    extractor: object | None = None  # the FeatureExtractor in use (built lazily by a worker)
    generation: int = 0  # bumped when the backbone or device changes: older results are not kept

    def store_features(self, name: str, image: np.ndarray, feats, generation: int | None = None) -> bool:
        """Keep ``name``'s features unless they were computed for an earlier backbone or device."""
        if generation is not None and generation != self.generation:
            return False
        self.features[name] = (image, feats)
        return True

    def adopt_extractor(self, extractor, generation: int) -> None:
        """The extractor a worker built becomes the panel's, if none is in use and the model is unchanged."""
        if extractor is not None and self.extractor is None and generation == self.generation:
            self.extractor = extractor

    def reset_model(self) -> None:
        """Another backbone or device: the next run builds its extractor and recomputes features."""
        self.extractor = None
        self.features.clear()
        self.generation += 1

    def forget_closed(self, open_names) -> None:
        """Images no longer open free their features and parameters."""
        for gone in [n for n in list(self.features) if n not in open_names]:
            self.features.pop(gone, None)
            self.params_shown.pop(gone, None)

    def forget(self, name: str) -> None:
        """An image taken off the screen (the folder browser moved on)."""
        self.features.pop(name, None)
        self.automatic.pop(name, None)
