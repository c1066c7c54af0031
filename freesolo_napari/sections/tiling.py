"""Tiling, as ``freesolo freemask --tile PX --tile-overlap PX``: images whose network input would be
over PX pixels are processed in overlapping windows of PX input pixels at the full input scale
(``engine/generators/tiling.py``), for many small objects that shrinking to fit would lose.

A feature-extraction choice, not a post-processing one: the panel keeps features made with the
tiling chosen when they were computed, so a change drops them and the image on screen is computed
again (one backbone pass per window); the sliders stay post-processing only.
"""

from __future__ import annotations

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QSpinBox, QWidget

from engine.generators.tiling import check_tiling

DEFAULT_OVERLAP = 64  # the command line's --tile-overlap default
MIN_TILE = 64  # engine.generators.tiling.check_tiling's smallest tile


class TilingControls(QWidget):
    """Tile side (off, or input px) and window overlap; ``tiling()`` validates and returns them."""

    changed = Signal()

    def __init__(self):
        super().__init__()
        self.tile = QSpinBox(minimum=0, maximum=8192, singleStep=128, value=0, specialValueText="off", suffix=" px",
                             keyboardTracking=False,  # typed values count when entered, not digit by digit
                             toolTip="Tiles (--tile): images whose network input would be over this many pixels are "
                             "processed in overlapping windows of this size at the full input scale, for many small "
                             "objects (off: the input is shrunk to fit). Changing it recomputes the features")
        self.overlap = QSpinBox(minimum=0, maximum=4096, singleStep=16, value=DEFAULT_OVERLAP, suffix=" px",
                                keyboardTracking=False, enabled=False,
                                toolTip="Overlap of neighbouring windows in input pixels (--tile-overlap; below "
                                "half the tile)")
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.tile, 1)
        row.addWidget(QLabel("overlap"))
        row.addWidget(self.overlap)
        self.tile.valueChanged.connect(self._changed)
        self.overlap.valueChanged.connect(self._changed)

    def _changed(self, *_args) -> None:
        """Only values the engine can plan are kept: a tile of at least 64 px, an overlap under half of it."""
        tile = self.tile.value()
        if 0 < tile < MIN_TILE:
            self.tile.setValue(MIN_TILE)  # emits again with the kept value
            return
        self.overlap.setEnabled(tile > 0)
        if tile and self.overlap.value() >= tile // 2:
            self.overlap.setMaximum(tile // 2 - 1)  # emits again with the clamped overlap
            return
        self.overlap.setMaximum(tile // 2 - 1 if tile else 4096)
        self.changed.emit()

    def tiling(self) -> tuple[int | None, int]:
        """(tile px, overlap px) as the engine takes them; (None, 0) when off (the overlap means nothing then)."""
        tile = self.tile.value() or None
        if tile is None:
            return None, 0
        check_tiling(tile, self.overlap.value())  # the control keeps it valid; a wrong pair is a bug here
        return tile, self.overlap.value()

    def text(self) -> str:
        tile, overlap = self.tile.value() or None, self.overlap.value()
        return "tiles off" if tile is None else f"tiles of {tile} px (overlap {overlap} px)"
