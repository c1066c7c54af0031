"""What **Run** runs on: the current image, every open image, or a folder.

Batches run in a napari worker that yields after each image: the progress bar counts images,
results appear as they come, and Cancel stops between two images (the image being computed is
finished and shown, nothing is left half-done).
"""

from __future__ import annotations

from typing import Callable

from qtpy.QtWidgets import QComboBox, QFormLayout, QVBoxLayout, QWidget

CURRENT, OPEN, FOLDER = "current image", "all open images", "folder"
RUN_TEXT = {CURRENT: "Run Free Mask", OPEN: "Run on all open images", FOLDER: "Run whole folder"}


class RunScope(QWidget):
    """The 'run on' selector; the folder browser below it shows when 'folder' is chosen."""

    def __init__(self, panel):
        from freesolo_napari.folder_view import FolderView

        super().__init__()
        self.panel = panel
        self.combo = QComboBox(toolTip="What Run computes: the selected image layer, every open 2D image layer "
                               "(one after the other), or every image of a folder (features cached on disk)")
        self.combo.addItems([CURRENT, OPEN, FOLDER])
        self.combo.currentTextChanged.connect(self._scope_changed)
        self.folder_view = FolderView(panel)
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
        self.panel.run_button.setText(RUN_TEXT.get(scope, RUN_TEXT[CURRENT]))
        self.panel.run_button.setToolTip({
            CURRENT: "Backbone pass + Free Mask on the selected image",
            OPEN: "Free Mask on every open 2D image layer, one after the other (Cancel stops between images)",
            FOLDER: "Compute every image of the folder into the on-disk cache (bad files are reported and skipped)",
        }[scope])

    def run(self) -> None:
        """What the Run button does for the chosen scope."""
        if self.scope == OPEN:
            self.run_open_images()
        elif self.scope == FOLDER:
            self.folder_view.run_folder()
        else:
            self.panel.run_current()

    # ---- all open images ------------------------------------------------------------------
    def run_open_images(self):
        """Free Mask on every open 2D image layer in one worker; returns the worker (None if nothing to do)."""
        from napari.layers import Image
        from freesolo_napari.workers import create_worker

        from freesolo_napari.folder import layer_path
        from freesolo_napari.inspect import QUERY_LAYER
        from freesolo_napari.panel import image_from_layer

        panel = self.panel
        try:
            params = panel.current_params()
        except ValueError as exc:
            panel._notify(str(exc))
            return None
        jobs = []
        for layer in list(panel.viewer.layers):
            if not isinstance(layer, Image) or layer.name == QUERY_LAYER:
                continue
            try:
                jobs.append((layer.name, image_from_layer(layer), layer_path(layer)))
            except ValueError as exc:  # not a 2D image: said once, the others still run
                panel._notify(f"Skipped: {exc}")
        if not jobs:
            panel._notify("No 2D image layer to segment: open an image first.")
            return None
        worker = create_worker(self, _open_images, panel, jobs, params, _ignore_errors=True)
        worker.yielded.connect(self._on_open_image)
        return self.start_batch(worker, len(jobs), f"Free Mask on {len(jobs)} open image(s)…")

    def _on_open_image(self, item) -> None:
        done, total, name, payload, error = item
        self.step(done, total)
        if error is not None:
            self.panel._notify(f"Free Mask failed on '{name}': {error}")
        else:
            self.panel._on_result(payload)
            self.panel.status.setText(f"{done} / {total} images · '{name}' done")

    # ---- shared batch plumbing ------------------------------------------------------------
    def start_batch(self, worker, total: int, message: str, on_done: Callable[[bool], str | None] | None = None,
                    on_error: Callable[[Exception], None] | None = None):
        """Run a generator worker with a determinate progress bar and Cancel; returns the worker.

        ``on_done(cancelled)`` may return the final status text.
        """
        panel = self.panel
        self.busy = True
        self._done, self._total, self._on_done, self._errored = 0, total, on_done, False
        panel._set_busy(True, message)
        panel.progress.setRange(0, max(total, 1))
        panel.progress.setValue(0)
        worker.errored.connect(lambda exc: setattr(self, "_errored", True))
        worker.errored.connect(on_error or panel._on_error)
        worker.finished.connect(lambda: self._finished(worker))
        panel._worker = worker
        worker.start()
        return worker

    def step(self, done: int, total: int) -> None:
        self._done, self._total = done, total
        self.panel.progress.setRange(0, max(total, 1))
        self.panel.progress.setValue(done)

    def _finished(self, worker) -> None:
        panel = self.panel
        cancelled = bool(worker.abort_requested)
        self.busy = False
        panel.progress.setRange(0, 0)  # back to the busy indicator for single runs
        text = (f"Cancelled after {self._done} of {self._total} image(s)." if cancelled
                else f"Done: {self._done} of {self._total} image(s).")
        panel._set_busy(False)
        if panel._worker is worker:
            panel._worker = None
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            text = on_done(cancelled) or text
        if not self._errored:  # an error's notification stays on the status line
            panel.status.setText(text)


def _open_images(panel, jobs, params):
    """Worker body: one image after the other; yields (done, total, name, payload, error)."""
    for i, (name, image, path) in enumerate(jobs, start=1):
        try:
            payload = panel._extract_and_post(name, image, params, path)
        except (OSError, RuntimeError, ValueError) as exc:
            yield i, len(jobs), name, None, str(exc)
            continue
        yield i, len(jobs), name, payload, None
