"""What **Run** runs on: the current image, every plane of it, every open image, or a folder; and
which channel of an RGB or multi-channel image.

Batches run in a napari worker that yields after each image (or plane): the progress bar counts
them, results appear as they come, and Cancel stops between two (the one being computed is
finished and shown, nothing is left half-done).
"""

from __future__ import annotations

from typing import Callable

from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QVBoxLayout, QWidget

from freesolo_napari.compute import compute_many, compute_planes
from freesolo_napari.folder import layer_path
from freesolo_napari.planes import (
    all_views,
    channel_choice,
    channel_items,
    current_view,
    layer_array,
    layout_of,
    plane_image,
)
from freesolo_napari.sections.folder_view import FolderView
from freesolo_napari.sections.inspector import QUERY_LAYER

CURRENT, PLANES, OPEN, FOLDER = "current image", "all planes of this image", "all open images", "folder"
RUN_TEXT = {CURRENT: "Run Free Mask", PLANES: "Run on all planes", OPEN: "Run on all open images",
            FOLDER: "Run whole folder"}
RUN_TIP = {
    CURRENT: "Backbone pass + Free Mask on the selected image (a stack: the plane on screen)",
    PLANES: "Free Mask on every plane of the selected stack, one after the other (Cancel stops between planes)",
    OPEN: "Free Mask on every open 2D image layer, one after the other (Cancel stops between images)",
    FOLDER: "Compute every image of the folder into the on-disk cache (bad files are reported and skipped)",
}


class RunScope(QWidget):
    """The 'run on' selector; the folder browser below it shows when 'folder' is chosen."""

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.combo = QComboBox(toolTip="What Run computes: the selected image layer (a stack: the plane on screen), "
                               "every plane of it, every open 2D image layer (one after the other), or every "
                               "image of a folder (features cached on disk)")
        self.combo.addItems([CURRENT, PLANES, OPEN, FOLDER])
        self.combo.currentTextChanged.connect(self._scope_changed)
        self.channel = QComboBox(toolTip="Channel of an RGB or multi-channel image to segment: all (as colour) or "
                                 "one alone, as grey (a new backbone pass). A (C, Y, X) layer is a stack of planes "
                                 "unless you pick its channels here")
        self.channel.setProperty("persist", False)  # follows the image, not a setting
        self.channel.currentIndexChanged.connect(self._channel_changed)
        self.channel_label = QLabel("channel")
        self.folder_view = FolderView(ctx, self)
        self.folder_view.setVisible(False)
        self.busy = False
        self._done = 0
        self._total = 0
        self._on_done: Callable[[bool], None] | None = None
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("run on", self.combo)
        form.addRow(self.channel_label, self.channel)
        self.channel.setVisible(False)
        self.channel_label.setVisible(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addWidget(self.folder_view)

    @property
    def scope(self) -> str:
        return self.combo.currentText()

    def set_scope(self, scope: str) -> None:
        if scope not in RUN_TEXT:
            raise ValueError(f"scope must be one of {list(RUN_TEXT)}, got {scope!r}")
        self.combo.setCurrentText(scope)

    def _scope_changed(self, scope: str) -> None:
        # the browser stays while a folder is open, e.g. to re-run one of its images on its own
        self.folder_view.setVisible(scope == FOLDER or self.folder_view.session is not None)
        self.ctx.set_run_button(RUN_TEXT.get(scope, RUN_TEXT[CURRENT]), RUN_TIP.get(scope, RUN_TIP[CURRENT]))

    def run(self) -> None:
        """What the Run button does for 'all open images' and 'folder' (the panel runs the current image)."""
        if self.scope == PLANES:
            self.run_all_planes()
        elif self.scope == OPEN:
            self.run_open_images()
        elif self.scope == FOLDER:
            self.folder_view.run_folder()

    # ---- channels -------------------------------------------------------------------------
    def show_channels(self) -> None:
        """The channel combo of the panel's image: shown for RGB and (C, Y, X) layers, with its choice."""
        layer = self._image_layer()
        items = channel_items(layer) if layer is not None else []
        self.channel.blockSignals(True)
        try:
            self.channel.clear()
            for text, choice in items:
                self.channel.addItem(text, choice)
            if items:
                chosen = channel_choice(self.ctx.state, layer)
                self.channel.setCurrentIndex(next((i for i, (_t, c) in enumerate(items) if c == chosen), 0))
        finally:
            self.channel.blockSignals(False)
        self.channel.setVisible(bool(items))
        self.channel_label.setVisible(bool(items))

    def set_channel(self, text: str) -> None:
        """Pick a channel by its text ('all (colour)', '0', ...); ValueError if the image has no such choice."""
        i = self.channel.findText(text)
        if i < 0:
            raise ValueError(f"no channel {text!r} for this image (choices: "
                             f"{[self.channel.itemText(k) for k in range(self.channel.count())]})")
        self.channel.setCurrentIndex(i)

    def _channel_changed(self, i: int) -> None:
        layer = self._image_layer()
        if layer is None or i < 0:
            return
        self.ctx.state.channels[layer.name] = self.channel.itemData(i)
        self.ctx.view_changed()

    def _image_layer(self):
        name = self.ctx.current_image()
        return self.ctx.viewer.layers[name] if name and name in self.ctx.viewer.layers else None

    # ---- all planes of this image ---------------------------------------------------------
    def run_all_planes(self):
        """Free Mask on every plane of the panel's image in one worker; returns the worker (None if nothing to do).

        Planes whose features are kept get post-processing only; the others a backbone pass each."""
        from freesolo_napari.workers import create_worker

        ctx, layer = self.ctx, self._image_layer()
        if layer is None:
            ctx.notify("No image layer to segment: open an image first.")
            return None
        try:
            params, generators = ctx.current_params(), ctx.current_generators()
            layout, views = all_views(ctx.viewer, layer, ctx.state)
        except ValueError as exc:
            ctx.notify(str(exc))
            return None
        cached = {v.key: ctx.state.features[v.key] for v in views if v.key in ctx.state.features}
        worker = create_worker(self, compute_planes, ctx.extractor_source(), layer_array(layer), layout, views,
                               params, cached, layer_path(layer), generators, _ignore_errors=True)
        worker.yielded.connect(self._on_plane)

        def done(cancelled: bool):
            unit = "plane(s)" if layout.leading else "image(s)"
            return (f"Cancelled after {self._done} of {self._total} {unit} of '{layer.name}'." if cancelled
                    else f"Done: {self._done} of {self._total} {unit} of '{layer.name}'.")

        return self.start_batch(worker, len(views), f"Free Mask on {len(views)} plane(s) of '{layer.name}'…",
                                on_done=done)

    def _on_plane(self, item) -> None:
        done, total, key, computed, error = item
        self.step(done, total)
        if error is not None:
            self.ctx.notify(f"Free Mask failed on '{key}': {error}")
        else:
            self.ctx.accept(computed)
            self.ctx.set_status(f"{done} / {total} planes · '{key}' done")

    # ---- all open images ------------------------------------------------------------------
    def run_open_images(self):
        """Free Mask on every open 2D image layer in one worker; returns the worker (None if nothing to do)."""
        from freesolo_napari.workers import create_worker

        ctx = self.ctx
        try:
            params, generators = ctx.current_params(), ctx.current_generators()
        except ValueError as exc:
            ctx.notify(str(exc))
            return None
        jobs = _open_image_jobs(ctx)
        if not jobs:
            ctx.notify("No 2D image layer to segment: open an image first.")
            return None
        worker = create_worker(self, compute_many, ctx.extractor_source(), jobs, params, generators,
                               _ignore_errors=True)
        worker.yielded.connect(self._on_open_image)
        return self.start_batch(worker, len(jobs), f"Free Mask on {len(jobs)} open image(s)…")

    def _on_open_image(self, item) -> None:
        done, total, name, computed, error = item
        self.step(done, total)
        if error is not None:
            self.ctx.notify(f"Free Mask failed on '{name}': {error}")
        else:
            self.ctx.accept(computed)
            self.ctx.set_status(f"{done} / {total} images · '{name}' done")

    # ---- shared batch plumbing ------------------------------------------------------------
    def start_batch(self, worker, total: int, message: str, on_done: Callable[[bool], str | None] | None = None,
                    on_error: Callable[[Exception], None] | None = None):
        """Run a generator worker with a determinate progress bar and Cancel; returns the worker.

        ``on_done(cancelled)`` may return the final status text.
        """
        ctx = self.ctx
        self.busy = True
        self._done, self._total, self._on_done, self._errored = 0, total, on_done, False
        ctx.set_busy(True, message, job=worker)
        ctx.set_progress(0, max(total, 1))
        worker.errored.connect(lambda exc: setattr(self, "_errored", True))
        worker.errored.connect(on_error or ctx.report_error)
        worker.finished.connect(lambda: self._finished(worker))
        worker.start()
        return worker

    def step(self, done: int, total: int) -> None:
        self._done, self._total = done, total
        self.ctx.set_progress(done, max(total, 1))

    def _finished(self, worker) -> None:
        ctx = self.ctx
        cancelled = bool(worker.abort_requested)
        self.busy = False
        ctx.set_progress(0, 0)  # back to the busy indicator for single runs
        text = (f"Cancelled after {self._done} of {self._total} image(s)." if cancelled
                else f"Done: {self._done} of {self._total} image(s).")
        ctx.set_busy(False, job=worker)
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            text = on_done(cancelled) or text
        if not self._errored:  # an error's notification stays on the status line
            ctx.set_status(text)


def _open_image_jobs(ctx) -> list[tuple]:
    """(name, RGB image, file path or None, view) of every open 2D image layer (each with its channel
    choice); stacks and unreadable layers are said once."""
    from napari.layers import Image

    jobs = []
    for layer in list(ctx.viewer.layers):
        if not isinstance(layer, Image) or layer.name == QUERY_LAYER:
            continue
        try:
            layout = layout_of(layer, channel_choice(ctx.state, layer))
            if layout.leading:
                raise ValueError(f"'{layer.name}' is a stack of {layout.planes} planes, not a 2D image: "
                                 f"run it with run on '{PLANES}'")
            view = current_view(ctx.viewer, layer, ctx.state)
            image = plane_image(layer_array(layer), layout, (), view.channel)
            jobs.append((layer.name, image, layer_path(layer), view))
        except ValueError as exc:  # not a 2D image: said once, the others still run
            ctx.notify(f"Skipped: {exc}")
    return jobs
