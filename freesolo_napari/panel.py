"""The FreeSOLO dock panel: run Free Mask (and the other generators) on an image layer and tune it live.

The backbone pass runs once per image in a worker thread and its features are kept; every
control change re-runs only the engine's cheap post-processing in a worker, coalesced: one
update runs at a time and the changes made meanwhile become a single re-run with the latest
values, so the overlay follows a moving slider without freezing the viewer or ending stale.

A stack (3-D, time-lapse) is processed plane by plane (``planes``): Run computes the plane napari's
dims sliders show, features are kept per plane (and per channel), and its masks go into one nD
Labels layer (``stack_layers``); moving to another plane catches up with the sliders
(post-processing only) or says that the plane has no masks yet.

Tiles (``sections.tiling``, as ``freesolo freemask --tile``) are a feature-extraction choice: a
change drops the kept features and computes the image on screen again, in windows.

This module composes the panel: it owns the state (``state.PanelState``, GUI thread only), gives
the sections (``freesolo_napari.sections``) a narrow ``context.PanelContext`` and lays them out.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QComboBox, QFormLayout, QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from engine.freemask.postprocess import FreeMaskParams
from engine.generators.merge import GeneratorConfig
from freesolo_napari.compute import Computed, ExtractorSource, compute_view
from freesolo_napari.context import PanelContext
from freesolo_napari.folder import layer_path
from freesolo_napari.layers import (
    FreeMaskUpdate,
    freemask_update,
    image_name_of,
    prepare_overlay,
    show_instances,
    show_overlay,
)
from freesolo_napari.planes import channel_choice, current_view, layer_array, layout_of, plane_view
from freesolo_napari.sections.export import ExportControls
from freesolo_napari.sections.inspector import QUERY_LAYER, QueryInspector
from freesolo_napari.sections.model import ModelControls
from freesolo_napari.sections.parameters import FreeMaskControls
from freesolo_napari.sections.review import ReviewControls
from freesolo_napari.sections.run_scope import CURRENT, RunScope
from freesolo_napari.sections.tiling import TilingControls
from freesolo_napari.sections.training import TrainingSection
from freesolo_napari.settings import PanelSettings
from freesolo_napari.stack_layers import follow_plane, show_plane_overlay
from freesolo_napari.state import PanelState
from freesolo_napari.workers import create_worker

if TYPE_CHECKING:
    import napari

TILING_RERUN_MS = 400  # the tile control rests this long before the image on screen is computed again


class FreeSoloPanel(QWidget):
    """One dock widget; napari passes the viewer as ``napari_viewer``."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer", settings_path: str | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.params = FreeMaskParams()
        self.state = PanelState()
        self.job = None  # the worker Cancel stops (a run or a batch)
        self._update_worker = None  # the post-processing worker in flight (one at a time)
        self._update_again = False  # controls changed while it ran: run once more with the latest values
        self._update_key = None  # (image, parameters) of the update in flight or last run
        self._build_ui()
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.layers.events.renamed.connect(self._refresh_layers)  # the folder browser reuses its layers
        self.viewer.layers.selection.events.active.connect(self._follow_selection)
        self.viewer.dims.events.current_step.connect(self._dims_changed)  # a stack's masks follow the slider
        self.layer_combo.currentTextChanged.connect(self._image_changed)
        self._refresh_layers()
        self.settings = PanelSettings(self, settings_path, notify=self.notify)  # restored now, saved after every change
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
        self.tiling = TilingControls()  # feature extraction: a change recomputes, never a slider's re-run
        self.tiling.changed.connect(self._tiling_changed)
        self._rerun_pending = False  # the image on screen had features made with the old tiling
        self._rerun_timer = QTimer(self, singleShot=True, interval=TILING_RERUN_MS)
        self._rerun_timer.timeout.connect(self._rerun_tiled)
        self.progress = QProgressBar(minimum=0, maximum=0, visible=False)
        self.status = QLabel("Pick an image layer and press Run.", wordWrap=True)
        self.auto_label = QLabel("", wordWrap=True, toolTip="What was chosen automatically for the image on screen, "
                                 "as the engine used it: input scale, stain view, query grid, tiles (windows), top-k, "
                                 "refinement radius")
        self.review = ReviewControls(self.viewer, self.state, self.set_status)  # colour by score, undo, ask first
        self.context = self._make_context()
        self.run_scope = RunScope(self.context)  # current image / all open images / folder (+ folder browser)
        self.export_controls = ExportControls(self.context, self.run_scope)  # scope, RLE/polygons, COCO, label images
        self.export_button = self.export_controls.coco_button
        self.inspector = QueryInspector(self.context, self.controls.tau.value)  # histogram, click-to-inspect
        self.model = ModelControls(self.context)  # backbone (+ weights file), device, SOLO model to predict with
        self.training = TrainingSection(self.context, self.model, self.run_scope.folder_view)  # in a separate process
        self.import_button = QPushButton("Import COCO…", toolTip="Show a COCO file's masks on the open images to review them")
        self.import_button.clicked.connect(self._ask_import)
        self._lay_out()

    def _make_context(self) -> PanelContext:
        return PanelContext(
            viewer=self.viewer, state=self.state, notify=self.notify, set_status=self.set_status,
            report_error=self.report_error, set_busy=self.set_busy, set_progress=self.set_progress,
            set_run_button=self.set_run_button, current_image=self.current_image, select_image=self.select_image,
            current_view=self.current_view, view_changed=self.view_changed,
            current_params=self.current_params, current_generators=self.current_generators,
            show_update=self.show_update, accept=self.accept,
            show_instances=self.show_instances, extractor_source=self.extractor_source,
            feature_config=self.feature_config, current_tiling=self.current_tiling, review=self.review)

    def _lay_out(self) -> None:
        form = QFormLayout()
        form.addRow("image", self.layer_combo)
        form.addRow("tiles", self.tiling)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.run_scope)
        layout.addWidget(self.controls)
        layout.addLayout(buttons)
        layout.addWidget(self.auto_label)
        layout.addWidget(self.review)
        layout.addWidget(self.export_controls)
        exchange = QHBoxLayout()
        exchange.addWidget(self.import_button)
        layout.addLayout(exchange)
        layout.addWidget(self.inspector)
        layout.addWidget(self.model)
        layout.addWidget(self.training)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)

    @property
    def tau_slider(self):
        return self.controls.tau.slider

    @property
    def histogram(self):
        return self.inspector.histogram

    @property
    def inspect_check(self):
        return self.inspector.check

    def _refresh_layers(self, *_args) -> None:
        from napari.layers import Image

        current = self.layer_combo.currentText()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image) and layer.name != QUERY_LAYER]
        self.state.forget_closed(names)  # a closed image frees its features
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)

    def current_image(self) -> str:
        return self.layer_combo.currentText()

    def select_image(self, name: str) -> None:
        self.layer_combo.setCurrentText(name)

    def current_view(self):
        """The plane and channel of the panel's image that Run computes now (``planes.View``; None: none)."""
        name = self.current_image()
        if not name or name not in self.viewer.layers:
            return None
        try:
            return current_view(self.viewer, self.viewer.layers[name], self.state)
        except ValueError:
            return None

    def _current_key(self) -> str | None:
        view = self.current_view()
        return None if view is None else view.key

    def current_params(self):
        return self.controls.params()

    def current_generators(self) -> GeneratorConfig:
        return self.controls.generators()

    def _current_settings(self) -> tuple:
        """(FreeMaskParams, GeneratorConfig) of the controls; ValueError names a bad value."""
        return self.current_params(), self.current_generators()

    def _follow_selection(self, event=None) -> None:
        """Selecting an image (or its masks) in napari's layer list makes it the panel's image."""
        layer = self.viewer.layers.selection.active
        name = image_name_of(layer.name) if layer is not None else None
        if name and self.layer_combo.findText(name) >= 0:
            self.layer_combo.setCurrentText(name)

    def _image_changed(self, name: str) -> None:
        """An image whose overlay was made with other slider values catches up (post-processing only).

        Decided on the next turn of the event loop, not inside the signal: the combo box also
        changes while layers are being removed (closing the viewer), and then nothing must start.
        """
        self.state.image = name
        self.run_scope.show_channels()
        self._show_choices()
        if self.state.keys_of(name):
            QTimer.singleShot(0, self.view_changed)

    def _catch_up(self) -> bool:
        """Re-run post-processing if the overlay of the plane on screen was made with other values."""
        key, state = self._current_key(), self.state
        if key is None or key not in state.features or key not in state.params_shown:
            return False
        try:
            params, generators = self._current_settings()
        except ValueError:
            return False
        if (state.params_shown[key], state.generators_shown.get(key, GeneratorConfig())) != (params, generators):
            self._schedule_update()
            return True
        return False

    def _dims_changed(self, event=None) -> None:
        """napari's dims slider moved: every stack's masks show their plane's table; the panel's image catches up."""
        for layer in list(self.viewer.layers):
            if follow_plane(self.viewer, layer):
                self.review.after_update(layer)  # colour by score: the plane's own scores
        view = self.current_view()
        if view is not None and view.index:
            self.view_changed()

    def view_changed(self) -> None:
        """The plane or channel on screen changed: catch up (post-processing only), or say it has no masks."""
        view = self.current_view()
        self._show_choices()
        if view is None:
            return
        if view.key in self.state.features:
            if not self._catch_up() and view.index:
                self.set_status(f"'{view.key}': masks made with the current settings")
        elif view.index or view.channel is not None:
            what = "plane" if view.index else "channel"
            self.set_status(f"'{view.key}' has no masks yet: press Run for this {what}"
                            + (", or run on all planes of this image." if view.index else " (a new backbone pass)."))

    # ---- work -----------------------------------------------------------------------------
    @property
    def backbone_calls(self) -> int:
        return 0 if self.state.extractor is None else self.state.extractor.backbone_calls

    def feature_config(self):
        """The feature settings runs compute with (the feature cache key): the Model section's choice."""
        return self.model.feature_config()

    def current_tiling(self) -> tuple[int | None, int]:
        """(tile px or None, overlap px) features are computed with now (the tiles row)."""
        return self.state.tiling

    def extractor_source(self) -> ExtractorSource:
        """The extractor in use, or how to build the Model section's choice (for one job's worker)."""
        return ExtractorSource(self.state.extractor, self.model.extractor_factory(), self.state.generation,
                               self.current_tiling())

    def _tiling_changed(self) -> None:
        """Another tiling: the kept features were made with the old one. They are dropped, and the image on
        screen, if it had masks, is computed again once the control rests (one backbone pass per window)."""
        key = self._current_key()
        self._rerun_pending |= key is not None and key in self.state.features
        if self.state.set_tiling(self.tiling.tiling()) and self._rerun_pending:
            self.set_status(f"{self.tiling.text()}: the features are computed again")
            self._rerun_timer.start()

    def _rerun_tiled(self) -> None:
        if not self._rerun_pending:
            return
        if not self.run_button.isEnabled():  # a job is running: its features are not kept (other tiling)
            self.set_status(f"{self.tiling.text()}: press Run when the running job ends to compute the features again")
            self._rerun_pending = False
            return
        self._rerun_pending = False
        self.run_current()

    def run(self) -> None:
        """The Run button: the current image, every open image or the folder (see ``sections.run_scope``)."""
        if self.run_scope.scope == CURRENT:
            self.run_current()
        else:
            self.run_scope.run()

    def run_current(self) -> None:
        """Compute features for the selected layer (worker thread), then show the masks."""
        name = self.current_image()
        if not name:
            self.notify("No image layer to segment: open an image first.")
            return
        layer = self.viewer.layers[name]
        try:  # a stack: the plane on screen; an RGB or multi-channel image: the chosen channel
            view = current_view(self.viewer, layer, self.state)
            layout = layout_of(layer, channel_choice(self.state, layer))
            params, generators = self._current_settings()
        except ValueError as exc:
            self.notify(str(exc))
            return
        worker = create_worker(self, compute_view, self.extractor_source(), layer_array(layer), layout, view, params,
                               layer_path(layer), generators, _ignore_errors=True)  # errors become a notification
        worker.returned.connect(self.accept)
        worker.errored.connect(self.report_error)
        worker.finished.connect(lambda: self.set_busy(False))
        self.set_busy(True, f"Computing features for '{view.key}'…", job=worker)
        worker.start()

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
                latest = (self._current_key(), *self._current_settings())
            except ValueError:
                latest = None  # update_overlay says what is wrong
            if latest != self._update_key:  # signals of the same change that ran need no re-run
                self.update_overlay()

    def update_overlay(self) -> None:
        """Re-run post-processing only (never the backbone) for the current layer (its plane on screen)."""
        view = self.current_view()
        if view is None or view.key not in self.state.features:
            return
        image, feats = self.state.features[view.key]
        try:
            params, generators = self._current_settings()
        except ValueError as exc:
            self.notify(str(exc))
            return
        self._update_key = (view.key, params, generators)
        worker = create_worker(self, freemask_update, view.name, feats, params, image, view, generators,
                               _ignore_errors=True)
        worker.returned.connect(self.show_update)
        worker.errored.connect(self.report_error)
        worker.finished.connect(self._update_done)
        self._update_worker = worker
        worker.start()

    # ---- query inspector ------------------------------------------------------------------
    def inspect_query(self, y: float, x: float) -> str:
        """Show the soft mask of the query at image pixel (y, x) of the current layer."""
        return self.inspector.inspect_query(y, x)

    # ---- COCO in and out ------------------------------------------------------------------
    def export_coco(self, path: str, segmentation: str | None = None, overwrite: bool = False,
                    scope: str | None = None):
        """COCO export of the chosen scope (see ``sections.export``); a folder export returns its worker."""
        return self.export_controls.export_coco(path, scope=scope, segmentation=segmentation, overwrite=overwrite)

    def import_coco(self, path: str) -> None:
        from freesolo_napari.exchange import import_coco

        try:
            matched, problems = import_coco(self.viewer, path, show_plane=self.import_plane)
        except (ValueError, OSError) as exc:
            self.notify(f"Import failed: {exc}")
            return
        self.state.params_shown.clear()  # imported masks are not Free Mask overlays: switching images keeps them
        text = f"Imported masks for {matched} image(s) from {Path(path).name}"
        if problems:
            text += f"; {len(problems)} problem(s): " + "; ".join(problems[:3])
        self.set_status(text)

    def _ask_import(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self, "Import COCO", "", "COCO JSON (*.json)")
        if path:
            self.import_coco(path)

    def cancel(self) -> None:
        if self.job is not None:
            self.job.quit()
        if self.run_scope.busy:  # a batch stops after the image in progress; its end frees the panel
            self.set_status("Cancelling after the current image…")
            return
        self.set_busy(False, "Cancelled.")

    # ---- results --------------------------------------------------------------------------
    def accept(self, computed: Computed) -> None:
        """A worker's features and extractor are stored here, on the GUI thread; then its masks are shown."""
        self.state.adopt_extractor(computed.extractor, computed.generation)
        self.state.store_features(computed.key, computed.image, computed.features, computed.generation, computed.view,
                                  computed.tiling)
        self.show_update(computed.update)

    def show_update(self, update: FreeMaskUpdate) -> None:
        """Show a Free Mask result prepared by a worker (``layers.freemask_update``); a stack's plane goes
        into its plane of the nD masks layer."""
        name, result, key = update.name, update.result, update.key
        index = tuple(update.view.index) if update.view is not None else ()
        if name not in self.viewer.layers:
            return
        leading = self._leading(name)
        if leading is None or len(index) != len(leading):
            return  # the image is read another way since (channels marked, layer replaced)
        if not self.review.allow_update(name, index):  # the user keeps edited masks
            return
        layer = self._plane_overlay(update.view, update.overlay, leading) if index else show_overlay(self.viewer, name, update.overlay)
        if not index:
            self.state.automatic[name] = np.asarray(layer.data).copy()
        self.state.params_shown[key] = update.params
        self.state.generators_shown[key] = update.generators or GeneratorConfig()
        if update.choices is not None:
            self.state.choices[key] = update.choices
        self.review.after_update(layer)
        if not index or self._current_key() == key:
            self.inspector.histogram.set_values(result.candidate_maskness, self.controls.min_score.value())
        self._show_choices()
        sources = Counter(m.source for m in result.instances)
        text = f"{len(result.instances)} masks on '{key}' (top-k {result.top_k})"
        if len(sources) > 1:
            text += ": " + ", ".join(f"{n} {source}" for source, n in sources.most_common())
        if key in self.state.features:
            text += f" · backbone {self.state.features[key][1].backbone_seconds:.2f}s"
        self.set_status(text)

    def _show_choices(self) -> None:
        """The automatic choices of the image (plane) on screen, as its last update recorded them."""
        choices = self.state.choices.get(self._current_key() or "")
        self.auto_label.setText("" if choices is None else choices.text())

    def _leading(self, name: str) -> tuple[int, ...] | None:
        """The plane axes of image layer ``name`` as the panel reads it now (None: not an image)."""
        layer = self.viewer.layers[name]
        try:
            return layout_of(layer, channel_choice(self.state, layer)).leading
        except (ValueError, AttributeError):
            return None

    def _plane_overlay(self, view, overlay, leading: tuple[int, ...]):
        """One plane of a stack into its nD masks layer; the plane's automatic labels are recorded."""
        state = self.state
        layer = show_plane_overlay(self.viewer, self.viewer.layers[view.name], view, leading, overlay)
        auto = state.automatic.get(view.name)
        if auto is None or auto.shape != layer.data.shape:
            auto = np.zeros(layer.data.shape, layer.data.dtype)  # a new masks layer: no other plane computed yet
        auto[tuple(view.index)] = overlay.labels
        state.automatic[view.name] = auto
        return layer

    def show_instances(self, name: str, instances, plane=None) -> bool:
        """Show engine instances in the image's reused Labels layer (asking first if the user edited it);
        ``plane`` (``engine.io.stacks.Plane``, e.g. of ``movie.tif[t=2]``): into that plane of a stack."""
        if name not in self.viewer.layers:
            return False
        if plane is not None and plane.index:
            return self._show_plane_instances(name, instances, plane)
        if not self.review.allow_update(name):
            return False
        layer = show_instances(self.viewer, self.viewer.layers[name], instances)
        self.state.automatic[name] = np.asarray(layer.data).copy()
        self.state.params_shown.pop(name, None)  # not a Free Mask overlay: the sliders leave it alone
        self.review.after_update(layer)
        return True

    def _plane_target(self, name: str, instances, plane):
        """(view, leading axes, plane shape) of ``plane`` of stack ``name`` when ``instances`` fit it; None otherwise."""
        layer, leading = self.viewer.layers[name], self._leading(name)
        view = plane_view(self.viewer, layer, self.state, plane) if leading else None
        if view is None:
            return None
        shape = tuple(layer_array(layer).shape[len(leading): len(leading) + 2])
        if instances and tuple(instances[0].shape) != shape:
            return None
        return view, leading, shape

    def _show_plane_instances(self, name: str, instances, plane) -> bool:
        target = self._plane_target(name, instances, plane)
        if target is None or not self.review.allow_update(name, target[0].index):
            return False
        view, leading, shape = target
        labels = self._plane_overlay(view, prepare_overlay(instances, shape), leading)
        self.review.after_update(labels)
        return True

    def import_plane(self, name: str, instances, plane) -> bool:
        """A COCO file's masks of one plane of stack ``name`` (``movie.tif[t=1]``) onto that plane, as
        imported masks: not an automatic result, so the plane counts as edited (a correction) and the
        sliders leave it alone; False when the stack has no such plane of that size."""
        if name not in self.viewer.layers:
            return False
        target = self._plane_target(name, instances, plane)
        if target is None:
            return False
        view, leading, shape = target
        labels = self._plane_overlay(view, prepare_overlay(instances, shape), leading)
        self.state.automatic[name][tuple(view.index)] = 0  # imported, not computed
        self.state.params_shown.pop(view.key, None)
        self.review.after_update(labels)
        return True

    def report_error(self, exc: Exception) -> None:
        self.notify(f"Free Mask failed: {exc}")

    def notify(self, message: str) -> None:
        from napari.utils.notifications import show_warning

        self.status.setText(message)
        show_warning(message)

    def set_status(self, message: str) -> None:
        self.status.setText(message)

    def set_busy(self, busy: bool, message: str | None = None, job=None) -> None:
        """Busy: progress shown, Run off, Cancel on (``job`` is what Cancel stops); idle: the reverse."""
        if busy and job is not None:
            self.job = job
        elif not busy and job is not None and self.job is job:
            self.job = None
        self.progress.setVisible(busy)
        self.run_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        if message:
            self.status.setText(message)

    def set_progress(self, value: int, maximum: int) -> None:
        self.progress.setRange(0, maximum)
        self.progress.setValue(value)

    def set_run_button(self, text: str, tooltip: str) -> None:
        self.run_button.setText(text)
        self.run_button.setToolTip(tooltip)
