"""What **Run** runs on: the current image, every open image, or a folder.

Batches run in a napari worker that yields after each image: the progress bar counts images,
results appear as they come, and Cancel stops between two images (the image being computed is
finished and shown, nothing is left half-done).
"""

from __future__ import annotations

from typing import Callable

from qtpy.QtWidgets import QComboBox, QFormLayout, QVBoxLayout, QWidget

from freesolo_napari.compute import compute_many
from freesolo_napari.folder import layer_path
from freesolo_napari.layers import image_from_layer
from freesolo_napari.sections.folder_view import FolderView
from freesolo_napari.sections.inspector import QUERY_LAYER

CURRENT, OPEN, FOLDER = "current image", "all open images", "folder"
RUN_TEXT = {CURRENT: "Run Free Mask", OPEN: "Run on all open images", FOLDER: "Run whole folder"}
RUN_TIP = {
    CURRENT: "Backbone pass + Free Mask on the selected image",
    OPEN: "Free Mask on every open 2D image layer, one after the other (Cancel stops between images)",
    FOLDER: "Compute every image of the folder into the on-disk cache (bad files are reported and skipped)",
}


class RunScope(QWidget):
    """The 'run on' selector; the folder browser below it shows when 'folder' is chosen."""

    def __init__(self, ctx):
        super().__init__()
        self.ctx = ctx
        self.combo = QComboBox(toolTip="What Run computes: the selected image layer, every open 2D image layer "
                               "(one after the other), or every image of a folder (features cached on disk)")
        self.combo.addItems([CURRENT, OPEN, FOLDER])
        self.combo.currentTextChanged.connect(self._scope_changed)
        self.folder_view = FolderView(ctx, self)
        self.folder_view.setVisible(False)
        self.busy = False
        self._done = 0
        self._total = 0
        self._on_done: Callable[[bool], None] | None = None
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("run on", self.combo)
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
        if self.scope == OPEN:
            self.run_open_images()
        elif self.scope == FOLDER:
            self.folder_view.run_folder()

    # ---- all open images ------------------------------------------------------------------
    def run_open_images(self):
        """Free Mask on every open 2D image layer in one worker; returns the worker (None if nothing to do)."""
        from freesolo_napari.workers import create_worker

        ctx = self.ctx
        try:
            params = ctx.current_params()
        except ValueError as exc:
            ctx.notify(str(exc))
            return None
        jobs = _open_image_jobs(ctx)
        if not jobs:
            ctx.notify("No 2D image layer to segment: open an image first.")
            return None
        worker = create_worker(self, compute_many, ctx.extractor_source(), jobs, params, _ignore_errors=True)
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
    """(name, RGB image, file path or None) of every open 2D image layer; the others are said once."""
    from napari.layers import Image

    jobs = []
    for layer in list(ctx.viewer.layers):
        if not isinstance(layer, Image) or layer.name == QUERY_LAYER:
            continue
        try:
            jobs.append((layer.name, image_from_layer(layer), layer_path(layer)))
        except ValueError as exc:  # not a 2D image: said once, the others still run
            ctx.notify(f"Skipped: {exc}")
    return jobs
