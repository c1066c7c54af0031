"""The FreeSOLO dock panel: run Free Mask on an image layer and tune it live.

The backbone pass runs once per image in a worker thread and its features are kept; every
control change re-runs only the engine's cheap post-processing in a worker, coalesced: one
update runs at a time and the changes made meanwhile become a single re-run with the latest
values, so the overlay follows a moving slider without freezing the viewer or ending stale.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from freesolo_napari.controls import FreeMaskControls
from freesolo_napari.inspect import MasknessHistogram
from freesolo_napari.layers import FreeMaskUpdate, freemask_update, show_overlay

if TYPE_CHECKING:
    import napari


def image_from_layer(layer) -> np.ndarray:
    """RGB uint8 (H, W, 3) from a napari image layer (2D, grayscale or RGB/RGBA)."""
    from engine.images import to_uint8_rgb

    data = np.asarray(layer.data)
    if data.ndim == 3 and data.shape[-1] not in (3, 4) or data.ndim > 3:
        raise ValueError(f"layer '{layer.name}' is not a 2D image (shape {data.shape}); pick a single plane")
    return to_uint8_rgb(data)


class FreeSoloPanel(QWidget):
    """One dock widget; napari passes the viewer as ``napari_viewer``."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer", settings_path: str | None = None):
        super().__init__()
        from engine.freemask import FreeMaskParams

        self.viewer = napari_viewer
        self.params = FreeMaskParams()
        self._extractor = None
        self._features: dict[str, tuple[np.ndarray, object]] = {}  # layer name -> (image, Features)
        self._worker = None
        self._automatic: dict[str, np.ndarray] = {}  # last automatic labels, to mark user edits
        self._update_worker = None  # the post-processing worker in flight (one at a time)
        self._update_again = False  # controls changed while it ran: run once more with the latest values
        self._update_key = None  # (image, parameters) of the update in flight or last run
        self._params_shown: dict[str, object] = {}  # image -> parameters of the overlay on screen
        self._build_ui()
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.layers.selection.events.active.connect(self._follow_selection)
        self.layer_combo.currentTextChanged.connect(self._image_changed)
        self._refresh_layers()
        from freesolo_napari.settings import PanelSettings

        self.settings = PanelSettings(self, settings_path)  # restored now, saved after every change
        self.settings.restore()
        self.settings.watch()

    # ---- UI -------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        self.layer_combo = QComboBox(toolTip="Image layer to segment")
        self.layer_combo.setProperty("persist", False)  # follows the open layers, not a setting
        self.run_button = QPushButton("Run Free Mask", toolTip="Backbone pass + Free Mask on the selected image")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel", toolTip="Stop the running job", enabled=False)
        self.cancel_button.clicked.connect(self.cancel)
        self.controls = FreeMaskControls(self.params)
        self.controls.changed.connect(self._schedule_update)
        from freesolo_napari.export_controls import ExportControls
        from freesolo_napari.review import ReviewControls
        from freesolo_napari.run_scope import RunScope

        self.run_scope = RunScope(self)  # current image / all open images / folder (+ folder browser)
        self.export_controls = ExportControls(self)  # scope, RLE/polygons, COCO and label images
        self.export_button = self.export_controls.coco_button
        self.review = ReviewControls(self)  # colour by score, undo, ask before replacing edits
        from freesolo_napari.model_controls import ModelControls
        from freesolo_napari.training import TrainingSection

        self.model = ModelControls(self)  # backbone (+ weights file), device, SOLO model to predict with
        self.training = TrainingSection(self)  # self-training in a separate process
        self.import_button = QPushButton("Import COCO…", toolTip="Show a COCO file's masks on the open images to review them")
        self.import_button.clicked.connect(self._ask_import)
        self.histogram = MasknessHistogram()
        self.inspect_check = QCheckBox("inspect queries (click the image)",
                                       toolTip="Click a pixel to see its query's soft mask, τ contour and maskness")
        self.inspect_check.toggled.connect(self._toggle_inspector)
        self.progress = QProgressBar(minimum=0, maximum=0, visible=False)
        self.status = QLabel("Pick an image layer and press Run.", wordWrap=True)

        form = QFormLayout()
        form.addRow("image", self.layer_combo)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.run_scope)
        layout.addWidget(self.controls)
        layout.addLayout(buttons)
        layout.addWidget(self.review)
        layout.addWidget(self.export_controls)
        exchange = QHBoxLayout()
        exchange.addWidget(self.import_button)
        layout.addLayout(exchange)
        layout.addWidget(QLabel("maskness of all candidates"))
        layout.addWidget(self.histogram)
        layout.addWidget(self.inspect_check)
        layout.addWidget(self.model)
        layout.addWidget(self.training)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)

    @property
    def tau_slider(self):
        return self.controls.tau.slider

    def _refresh_layers(self, *_args) -> None:
        from napari.layers import Image

        from freesolo_napari.inspect import QUERY_LAYER

        current = self.layer_combo.currentText()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image) and layer.name != QUERY_LAYER]
        for gone in [n for n in list(self._features) if n not in names]:  # a closed image frees its features
            for table in (self._features, self._params_shown):
                table.pop(gone, None)
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)

    def current_params(self):
        return self.controls.params()

    def _follow_selection(self, event=None) -> None:
        """Selecting an image (or its masks) in napari's layer list makes it the panel's image."""
        from freesolo_napari.layers import image_name_of

        layer = self.viewer.layers.selection.active
        name = image_name_of(layer.name) if layer is not None else None
        if name and self.layer_combo.findText(name) >= 0:
            self.layer_combo.setCurrentText(name)

    def _image_changed(self, name: str) -> None:
        """An image whose overlay was made with other slider values catches up (post-processing only).

        Decided on the next turn of the event loop, not inside the signal: the combo box also
        changes while layers are being removed (closing the viewer), and then nothing must start.
        """
        if name in self._features and name in self._params_shown:
            QTimer.singleShot(0, self._catch_up)

    def _catch_up(self) -> None:
        name = self.layer_combo.currentText()
        if name not in self.viewer.layers or name not in self._features or name not in self._params_shown:
            return
        try:
            params = self.current_params()
        except ValueError:
            return
        if self._params_shown[name] != params:
            self._schedule_update()

    # ---- work -----------------------------------------------------------------------------
    @property
    def backbone_calls(self) -> int:
        return 0 if self._extractor is None else self._extractor.backbone_calls

    def run(self) -> None:
        """The Run button: the current image, every open image or the folder (see ``run_scope``)."""
        self.run_scope.run()

    def run_current(self) -> None:
        """Compute features for the selected layer (worker thread), then show the masks."""
        from freesolo_napari.workers import create_worker

        name = self.layer_combo.currentText()
        if not name:
            self._notify("No image layer to segment: open an image first.")
            return
        try:
            image = image_from_layer(self.viewer.layers[name])
        except ValueError as exc:
            self._notify(str(exc))
            return
        try:
            params = self.current_params()
        except ValueError as exc:
            self._notify(str(exc))
            return
        self._set_busy(True, f"Computing features for '{name}'…")
        from freesolo_napari.folder import layer_path

        worker = create_worker(self, self._extract_and_post, name, image, params, layer_path(self.viewer.layers[name]),
                               _ignore_errors=True)  # errors become a notification
        worker.returned.connect(self._on_result)
        worker.errored.connect(self._on_error)
        worker.finished.connect(lambda: self._set_busy(False))
        self._worker = worker
        worker.start()

    def _get_extractor(self):
        if self._extractor is None:
            self._extractor = self.model.build_extractor()  # the Model section's backbone and device
        return self._extractor

    def _extract_and_post(self, name: str, image: np.ndarray, params, path: str | None = None):
        """Features (from the on-disk cache for images loaded from a file by this plugin) + Free Mask."""
        from freesolo_napari.folder import extract_features

        feats = extract_features(self._get_extractor(), image, path)
        self._features[name] = (image, feats)
        return freemask_update(name, feats, params, image)

    def _schedule_update(self, *_args) -> None:
        """Throttle: the overlay follows a moving slider at the speed of post-processing, never a stale value.

        Idle, the update starts at once (a timer would wait for the window's repaint first);
        busy, one re-run is queued and takes the latest values when the running one ends.
        """
        if self._update_worker is not None:
            self._update_again = True
        else:
            self.update_overlay()

    def _update_done(self) -> None:
        self._update_worker = None
        if self._update_again:
            self._update_again = False
            try:
                latest = (self.layer_combo.currentText(), self.current_params())
            except ValueError:
                latest = None  # update_overlay says what is wrong
            if latest != self._update_key:  # signals of the same change that ran need no re-run
                self.update_overlay()

    def update_overlay(self) -> None:
        """Re-run post-processing only (never the backbone) for the current layer."""
        from freesolo_napari.workers import create_worker

        name = self.layer_combo.currentText()
        if name not in self._features:
            return
        image, feats = self._features[name]
        try:
            params = self.current_params()
        except ValueError as exc:
            self._notify(str(exc))
            return
        self._update_key = (name, params)
        worker = create_worker(self, freemask_update, name, feats, params, image, _ignore_errors=True)
        worker.returned.connect(self._on_result)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._update_done)
        self._update_worker = worker
        worker.start()

    # ---- query inspector ------------------------------------------------------------------
    def inspect_query(self, y: float, x: float) -> str:
        """Show the soft mask of the query at image pixel (y, x) of the current layer."""
        from freesolo_napari.inspect import show_query

        name = self.layer_combo.currentText()
        if name not in self._features:
            self.status.setText("Run Free Mask on this image first, then click to inspect a query.")
            return self.status.text()
        image, feats = self._features[name]
        tau = self.controls.tau.value()
        mness, frac = show_query(self.viewer, self.viewer.layers[name], feats, y, x, tau)
        self.status.setText(f"query at ({y:.0f}, {x:.0f}): maskness {mness:.2f} at τ {tau:.2f}, "
                            f"mask covers {frac:.0%} of the image")
        return self.status.text()

    def _toggle_inspector(self, on: bool) -> None:
        callbacks = self.viewer.mouse_drag_callbacks
        if on and self._on_click not in callbacks:
            callbacks.append(self._on_click)
        elif not on and self._on_click in callbacks:
            callbacks.remove(self._on_click)

    def _on_click(self, viewer, event) -> None:
        name = self.layer_combo.currentText()
        if name in viewer.layers:
            y, x = viewer.layers[name].world_to_data(event.position)[-2:]
            self.inspect_query(float(y), float(x))

    # ---- COCO in and out ------------------------------------------------------------------
    def export_coco(self, path: str, segmentation: str | None = None, overwrite: bool = False,
                    scope: str | None = None):
        """COCO export of the chosen scope (see ``export_controls``); a folder export returns its worker."""
        return self.export_controls.export_coco(path, scope=scope, segmentation=segmentation, overwrite=overwrite)

    def import_coco(self, path: str) -> None:
        from freesolo_napari.exchange import import_coco

        try:
            matched, problems = import_coco(self.viewer, path)
        except (ValueError, OSError) as exc:
            self._notify(f"Import failed: {exc}")
            return
        self._params_shown.clear()  # imported masks are not Free Mask overlays: switching images keeps them
        text = f"Imported masks for {matched} image(s) from {Path(path).name}"
        if problems:
            text += f"; {len(problems)} problem(s): " + "; ".join(problems[:3])
        self.status.setText(text)

    def _ask_export(self) -> None:
        self.export_controls.ask_coco()

    def _ask_import(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self, "Import COCO", "", "COCO JSON (*.json)")
        if path:
            self.import_coco(path)

    def cancel(self) -> None:
        if self._worker is not None:
            self._worker.quit()
        if self.run_scope.busy:  # a batch stops after the image in progress; its end frees the panel
            self.status.setText("Cancelling after the current image…")
            return
        self._set_busy(False, "Cancelled.")

    # ---- results --------------------------------------------------------------------------
    def _on_result(self, update: FreeMaskUpdate) -> None:
        """Show a Free Mask result prepared by a worker (``layers.freemask_update``)."""
        name, result = update.name, update.result
        if name not in self.viewer.layers:
            return
        if not self.review.allow_update(name):  # the user keeps edited masks
            return
        layer = show_overlay(self.viewer, name, update.overlay)
        self._automatic[name] = np.asarray(layer.data).copy()
        self._params_shown[name] = update.params
        self.review.after_update(layer)
        feats = self._features[name][1]
        self.histogram.set_values(result.candidate_maskness, self.controls.min_score.value())
        size = f", objects ≈{feats.object_size:.0f} px" if feats.object_size else ""
        self.status.setText(
            f"{len(result.instances)} masks on '{name}' (top-k {result.top_k})\n"
            f"input scale {feats.input_scale:.2f}{' (auto' + size + ')' if feats.auto_scale else ''}"
            f" · backbone {feats.backbone_seconds:.2f}s · refine radius {result.refine_radius}px"
        )

    def _on_error(self, exc: Exception) -> None:
        self._notify(f"Free Mask failed: {exc}")

    def _notify(self, message: str) -> None:
        from napari.utils.notifications import show_warning

        self.status.setText(message)
        show_warning(message)

    def _set_busy(self, busy: bool, message: str | None = None) -> None:
        self.progress.setVisible(busy)
        self.run_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        if message:
            self.status.setText(message)

