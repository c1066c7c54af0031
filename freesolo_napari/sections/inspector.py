"""Visual debugging of τ and scales: a query's soft mask on click, and a maskness histogram.

Both read what the engine already computed (``query_similarity``, ``candidate_maskness``);
nothing here re-runs the backbone.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QCheckBox, QLabel, QVBoxLayout, QWidget

from engine.generators.tiling import TiledFeatures

QUERY_LAYER = "query soft mask"


def show_query(viewer, image_layer, features, y: float, x: float, tau: float) -> tuple[float, float]:
    """Show the soft mask of the query at image pixel (y, x) with its τ contour.

    Returns (maskness, mask area fraction) of that query at τ: what the user is judging.
    """
    from engine.freemask.soft_masks import query_view

    view = query_view(features, y, x, tau)
    placed = {"scale": view.scale, "translate": view.translate}  # cell centres on pixel centres
    if QUERY_LAYER in viewer.layers:
        layer = viewer.layers[QUERY_LAYER]
        layer.data = view.soft
        layer.scale, layer.translate = view.scale, view.translate
    else:
        viewer.add_image(view.soft, name=QUERY_LAYER, colormap="magma", opacity=0.6, contrast_limits=(0, 1),
                         blending="additive", **placed)
    contour = f"{QUERY_LAYER} · τ contour"
    if contour in viewer.layers:
        viewer.layers[contour].data = view.edge.astype(np.uint8)
        viewer.layers[contour].scale, viewer.layers[contour].translate = view.scale, view.translate
    else:
        viewer.add_labels(view.edge.astype(np.uint8), name=contour, opacity=1.0, **placed)
    return view.maskness, view.area_fraction


class MasknessHistogram(QWidget):
    """Histogram of every candidate's maskness, with the score threshold marked."""

    def __init__(self, bins: int = 30):
        super().__init__(toolTip="Maskness of every candidate mask; the red line is the minimum score")
        self.setMinimumHeight(70)
        self.bins = bins
        self.counts = np.zeros(bins, dtype=int)
        self.threshold = 0.0

    def set_values(self, values: np.ndarray, threshold: float) -> None:
        self.counts = np.histogram(np.clip(values, 0, 1), bins=self.bins, range=(0.0, 1.0))[0]
        self.threshold = float(threshold)
        self.update()

    def paintEvent(self, _event) -> None:  # noqa: N802 (Qt's name)
        p = QPainter(self)
        w, h = self.width(), self.height()
        top = max(int(self.counts.max()), 1)
        bar = w / self.bins
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor(120, 170, 220))
        for i, c in enumerate(self.counts):
            bh = (h - 14) * c / top
            p.drawRect(QRectF(i * bar + 1, h - 12 - bh, bar - 2, bh))
        p.setPen(QPen(QColor(230, 60, 60), 2))
        x = self.threshold * w
        p.drawLine(int(x), 0, int(x), h - 12)
        p.setPen(QColor(200, 200, 200))
        p.drawText(2, h - 1, "0")
        p.drawText(w - 10, h - 1, "1")
        p.end()


class QueryInspector(QWidget):
    """The maskness histogram and 'inspect queries': a click shows that pixel's query."""

    def __init__(self, ctx, tau):
        super().__init__()
        self.ctx = ctx
        self.tau = tau  # () -> the τ slider's value
        self.histogram = MasknessHistogram()
        self.check = QCheckBox("inspect queries (click the image)",
                               toolTip="Click a pixel to see its query's soft mask, τ contour and maskness")
        self.check.toggled.connect(self.toggle)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("maskness of all candidates"))
        layout.addWidget(self.histogram)
        layout.addWidget(self.check)

    def inspect_query(self, y: float, x: float) -> str:
        """Show the soft mask of the query at image pixel (y, x) of the current layer."""
        ctx = self.ctx
        view = ctx.current_view()  # a stack: the plane on screen
        if view is None or view.key not in ctx.state.features:
            text = "Run Free Mask on this image first, then click to inspect a query."
        elif isinstance(ctx.state.features[view.key][1], TiledFeatures):
            text = "Query inspection needs the whole image's features: turn tiles off and Run to inspect queries."
        else:
            _image, feats = ctx.state.features[view.key]
            tau = self.tau()
            mness, frac = show_query(ctx.viewer, ctx.viewer.layers[view.name], feats, y, x, tau)
            text = (f"query at ({y:.0f}, {x:.0f}): maskness {mness:.2f} at τ {tau:.2f}, "
                    f"mask covers {frac:.0%} of the image")
        ctx.set_status(text)
        return text

    def toggle(self, on: bool) -> None:
        callbacks = self.ctx.viewer.mouse_drag_callbacks
        if on and self.on_click not in callbacks:
            callbacks.append(self.on_click)
        elif not on and self.on_click in callbacks:
            callbacks.remove(self.on_click)

    def on_click(self, viewer, event) -> None:
        name = self.ctx.current_image()
        if name in viewer.layers:
            y, x = viewer.layers[name].world_to_data(event.position)[-2:]
            self.inspect_query(float(y), float(x))
