"""The folder browser: one image of a folder at a time, Previous/Next, and 'Run whole folder'.

Images are loaded lazily (in a worker) when shown. Their masks come from the engine's on-disk
feature cache plus post-processing, so an image computed once — in this session, an earlier
one, or by ``freesolo freemask`` — reopens without the network. Edits of the image on screen
are stored on disk a moment after each paint, fill or erase stroke (and when you move to another
image or napari quits), so closing napari never loses them (see ``freesolo_napari.folder``).
Once a self-training round is loaded (``set_round``), images without edits show that round's
masks instead of Free Mask's.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from freesolo_napari.folder import PATH_KEY, FolderSession
from freesolo_napari.large import FACTOR_KEY, image_layer_data, preview_factor, preview_shape
from freesolo_napari.layers import freemask_update, labels_name, points_name, set_labels
from freesolo_napari.planes import layer_array

MAX_SKIP_NOTES = 20  # non-image files reported one by one, then summarised
EDIT_SAVE_DELAY_MS = 800  # edits are written this long after the last stroke (one write per burst)
STEP_SHOW_MS = 100  # a folder run's progress and status line change at most this often (the latest step wins)


class FolderView(QWidget):
    """Open folder…, Previous / Next and the image's position; ``batch`` (the run scope) runs the whole folder."""

    def __init__(self, ctx, batch):
        super().__init__()
        self.ctx = ctx
        self.batch = batch  # start_batch / step: progress and Cancel of 'Run whole folder'
        self.session: FolderSession | None = None
        self.shown: str | None = None  # name of the image layer showing the current folder image
        self._parked: dict = {}  # 'image' / 'labels' / 'points' layers of the image left, for the next one
        self._listing = None  # the worker listing the folder being opened
        self.round: tuple[int, dict] | None = None  # (K, {file name: ImageResult}) of the round loaded last
        self._loaders: list = []  # running load workers (kept referenced)
        self.open_button = QPushButton("Open folder…", toolTip="Choose a folder of images to browse and segment")
        self.open_button.clicked.connect(self._ask_folder)
        self.prev_button = QPushButton("◀ Previous", enabled=False, toolTip="Show the previous image of the folder")
        self.prev_button.clicked.connect(lambda: self.show_image(self.session.index - 1))
        self.next_button = QPushButton("Next ▶", enabled=False, toolTip="Show the next image of the folder")
        self.next_button.clicked.connect(lambda: self.show_image(self.session.index + 1))
        self.position = QLabel("no folder open", toolTip="Image shown: number / images in the folder, file name",
                               wordWrap=True)
        self._save_timer = QTimer(self, singleShot=True, interval=EDIT_SAVE_DELAY_MS)
        self._save_timer.timeout.connect(self.save_current_edits)
        self._step = None  # (done, total, name, from the cache) of a folder run, not shown yet
        self._step_timer = QTimer(self, singleShot=True, interval=STEP_SHOW_MS)
        self._step_timer.timeout.connect(self._show_step)
        ctx.viewer.layers.events.inserted.connect(self._on_layer_inserted)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self._flush_edits)
        row = QHBoxLayout()
        row.addWidget(self.prev_button)
        row.addWidget(self.next_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.open_button)
        layout.addLayout(row)
        layout.addWidget(self.position)

    # ---- storing edits as they happen -----------------------------------------------------
    def _on_layer_inserted(self, event) -> None:
        """Watch the shown image's Labels layer for the user's strokes."""
        layer = event.value
        if self.shown is not None and layer.name == labels_name(self.shown) and hasattr(layer.events, "paint"):
            layer.events.paint.connect(self._edited)

    def _edited(self, *_args) -> None:
        if self.session is None or self.shown is None:
            return
        try:
            self._save_timer.start()  # restarts: a burst of strokes is one write
        except RuntimeError:  # the panel was closed while the viewer lives on: nothing to store into
            self.session = None

    def _flush_edits(self) -> None:
        """Write pending edits now (napari quitting, another image, an export)."""
        if self._save_timer.isActive():
            self._save_timer.stop()
            self.save_current_edits()

    def hideEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        """Closing the viewer hides the panel first: pending edits are written then."""
        self._flush_edits()
        super().hideEvent(event)

    # ---- opening and navigating -----------------------------------------------------------
    def _ask_folder(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(self, "Open a folder of images")
        if folder:
            self.open_folder(folder)

    def open_folder(self, folder: str | Path, then: Callable[[FolderSession], None] | None = None):
        """List the folder's images in a worker (thousands of files take a while), then show the first and
        call ``then(session)``. Returns the worker; None, with a message, when ``folder`` is no folder (a
        folder without images is said when the listing ends)."""
        from freesolo_napari.workers import create_worker

        folder = Path(folder)
        if not folder.is_dir():
            self.ctx.notify(f"Cannot open folder: '{folder}' is not a folder")
            return None
        worker = create_worker(self, FolderSession, folder, _ignore_errors=True)
        self._listing = worker
        worker.returned.connect(lambda session: self._opened(worker, session, then))
        worker.errored.connect(lambda exc: self._listing is worker and self.ctx.notify(f"Cannot open folder: {exc}"))
        self.ctx.set_status(f"Listing '{folder}'…")
        worker.start()
        return worker

    def _opened(self, worker, session: FolderSession, then) -> None:
        if self._listing is not worker:
            return  # another folder was opened since
        self._listing = None
        self._leave_current()
        self.session = session
        self.setVisible(True)
        self.ctx.set_status(f"{len(session)} image(s) in '{session.folder}'"
                            + (f"; {len(session.skipped)} other entries skipped" if session.skipped else ""))
        accepted = session.accepted_round()
        if accepted is None:
            self.show_image(0)
        else:  # the round accepted in an earlier session, read before the first image shows
            self._read_accepted(session, *accepted)
        if then is not None:
            then(session)

    def _read_accepted(self, session: FolderSession, k: int, masks: Path) -> None:
        from freesolo_napari.sections.trainer_process import read_round
        from freesolo_napari.workers import create_worker

        worker = create_worker(self, read_round, masks, f"model round {k}", _ignore_errors=True)

        def done(payload=None):
            if self.session is session:
                if payload is not None:
                    self.round = (k, payload[0])
                self.show_image(session.index)

        worker.returned.connect(done)
        worker.errored.connect(lambda exc: (self.ctx.notify(f"Cannot read round {k} ({masks}): {exc}"), done()))
        worker.start()

    def set_round(self, k: int, results: dict, masks: Path | None = None) -> None:
        """Round ``k``'s masks become what unedited folder images show (file names as the run names them);
        with ``masks`` (the round's COCO file) the folder keeps showing them in later sessions."""
        self.round = (k, results)
        if masks is not None and self.session is not None:
            try:
                self.session.save_accepted_round(k, masks)
            except OSError as exc:
                self.ctx.notify(f"Could not remember round {k} for this folder: {exc}")

    def _round_result(self, name: str):
        if self.round is None:
            return None
        results = self.round[1]
        return results.get(name) or next((r for n, r in results.items() if Path(n).name == Path(name).name), None)

    def show_name(self, name: str):
        """Show the folder image with file name ``name``; None if the folder has no such image."""
        if self.session is None or name not in self.session.names:
            return None
        return self.show_image(self.session.names.index(name))

    def show_image(self, index: int):
        """Show image ``index`` of the folder (loaded in a worker); returns the load worker."""
        from freesolo_napari.workers import create_worker

        if self.session is None:
            return None
        self._leave_current()
        index = self.session.go(index)
        self._update_nav()
        worker = create_worker(self, _load, self.session, index, self.ctx.feature_config(), *self._settings(),
                               self._round_result(self.session.names[index]), self.ctx.current_tiling(),
                               _ignore_errors=True)
        worker.returned.connect(self._on_loaded)
        worker.errored.connect(self.ctx.report_error)
        worker.finished.connect(lambda: self._loaders.remove(worker) if worker in self._loaders else None)
        self._loaders.append(worker)
        worker.start()
        return worker

    def _settings(self):
        """(FreeMaskParams, GeneratorConfig) of the controls; the defaults if a control holds a bad value."""
        try:
            return self.ctx.current_params(), self.ctx.current_generators()
        except ValueError:
            from engine.freemask.postprocess import FreeMaskParams
            from engine.generators.merge import GeneratorConfig

            return FreeMaskParams(), GeneratorConfig()

    def _update_nav(self) -> None:
        s = self.session
        self.position.setText(s.position_text() if s else "no folder open")
        self.prev_button.setEnabled(bool(s) and s.index > 0)
        self.next_button.setEnabled(bool(s) and s.index < len(s) - 1)

    def _on_loaded(self, loaded) -> None:
        index, image, feats, update, edits, error, from_round = loaded
        session, ctx, viewer = self.session, self.ctx, self.ctx.viewer
        if session is None or index != session.index or self.shown is not None:
            return  # the user moved on while this image loaded
        name = session.names[index]
        if error is not None:
            self._drop_parked()
            self.position.setText(f"{session.position_text()} — unreadable")
            ctx.notify(f"Cannot show '{name}': {error}")
            return
        layer = self._place_image(image, name, str(session.paths[index]))
        self.shown = layer.name
        viewer.layers.selection.active = layer
        viewer.reset_view()
        ctx.select_image(layer.name)
        if feats is not None:
            ctx.state.store_features(layer.name, image, feats)
        self._adopt_parked_masks(layer.name, image.shape[:2],
                                 with_labels=edits is not None or from_round is not None or update is not None)
        self._drop_parked()  # what nothing takes over
        if edits is not None:
            labels = set_labels(viewer, layer.name, edits.labels, edits.table)
            if edits.automatic is not None:
                ctx.state.automatic[layer.name] = edits.automatic
            ctx.review.after_update(labels)
            ctx.set_status(f"'{name}': your edited masks (from the cache)")
        elif from_round is not None:
            ctx.show_instances(layer.name, from_round.instances)
            ctx.set_status(f"'{name}': masks of model round {self.round[0]}")
        elif update is not None:
            ctx.show_update(replace(update, name=layer.name))
        else:
            ctx.set_status(f"'{name}' has no masks yet: Run whole folder, or pick 'current image' and Run.")

    def _leave_current(self) -> None:
        """Store the shown image's edits (or forget stale ones) and park its layers for the next image.

        napari collects garbage after every layer it removes (0.5–1.5 s of the GUI thread per step
        here), so the next image reuses the layers: until it arrives the old image stays on screen
        with its masks locked (a stroke there would belong to no image)."""
        if self.shown is None or self.session is None:
            return
        name, viewer = self.shown, self.ctx.viewer
        self.save_current_edits()
        self._parked = {kind: viewer.layers[n] for kind, n in
                        (("image", name), ("labels", labels_name(name)), ("points", points_name(name)))
                        if n in viewer.layers}
        if "labels" in self._parked:
            self._parked["labels"].editable = False  # also clears its undo history
        self.ctx.state.forget(name)
        self.ctx.review.forget(name)
        self.shown = None

    def _place_image(self, image: np.ndarray, name: str, path: str):
        """The image layer of the folder image ``name``: the parked layer with new data and name when it
        can show it (neither is a pyramid), else a new layer (the parked one removed)."""
        viewer = self.ctx.viewer
        data, large = image_layer_data(image)  # a very large image: a pyramid
        metadata = {PATH_KEY: path, "file_name": name}
        layer = self._parked.pop("image", None)
        if layer is not None and (large or layer.multiscale or layer not in viewer.layers):
            if layer in viewer.layers:
                viewer.layers.remove(layer)
            layer = None
        if layer is None:
            return viewer.add_image(data, name=name, rgb=True, metadata=metadata, **large)
        layer.data = data
        layer.metadata = metadata
        layer.reset_contrast_limits()
        layer.name = name  # napari adds a suffix if another layer has the name
        return layer

    def _adopt_parked_masks(self, image_name: str, shape: tuple[int, int], with_labels: bool) -> None:
        """The parked text layer, and with ``with_labels`` (its masks are coming) the parked masks layer,
        become (emptied) those of ``image_name``.

        The text layer stays even for an image without masks: creating and removing napari's text
        Points layers as one browses ended in a segmentation fault inside OpenGL drawing (software
        OpenGL; see docs/measurements.md), reusing one did not."""
        viewer = self.ctx.viewer
        if preview_factor(shape) > 1:
            return  # a large image's masks are a downsampled layer of their own
        kinds = (("labels", labels_name(image_name)),) * with_labels + (("points", points_name(image_name)),)
        for kind, renamed in kinds:
            layer = self._parked.pop(kind, None)
            if layer is None or layer not in viewer.layers:
                continue
            taken = renamed in viewer.layers and viewer.layers[renamed] is not layer  # (the same image again: its own)
            if taken or layer.metadata.get(FACTOR_KEY, 1) > 1 or layer.ndim != 2:
                self._parked[kind] = layer  # another layer has the name, or made for a large image or a stack: removed
                continue
            if kind == "labels":
                layer.data = np.zeros(shape, np.uint16)  # not the old image's masks: nothing counts as edited
                layer.editable = True
                layer.events.paint.connect(self._edited)  # connected once (napari skips a repeat)
            else:
                layer.data = np.zeros((0, 2))
            layer.name = renamed

    def _drop_parked(self) -> None:
        """Remove parked layers nothing took over (the new image has no masks, or another scale)."""
        viewer, parked = self.ctx.viewer, self._parked
        self._parked = {}
        for layer in parked.values():
            if layer in viewer.layers:
                viewer.layers.remove(layer)

    def save_current_edits(self) -> None:
        """Keep the shown image's masks in the edits store if the user changed them."""
        self._save_timer.stop()
        if self.shown is None or self.session is None:
            return
        name, viewer = self.shown, self.ctx.viewer
        layer = viewer.layers[name] if name in viewer.layers else None
        path = Path(layer.metadata[PATH_KEY]) if layer is not None and PATH_KEY in layer.metadata else None
        if path is None:
            return
        try:
            if labels_name(name) in viewer.layers and self.ctx.review.is_edited(name):
                lab = viewer.layers[labels_name(name)]
                self.session.save_edits(path, np.asarray(lab.data), lab.features, self.ctx.state.automatic.get(name),
                                        layer_array(layer).shape[:2])
            elif labels_name(name) in viewer.layers:
                self.session.clear_edits(path)
        except OSError as exc:
            self.ctx.notify(f"Could not store the edits of '{name}': {exc}")

    def live_results(self) -> dict:
        """The shown image's masks as painted now (edits included), keyed by file name."""
        from freesolo_napari.exchange import open_results

        if self.shown is None:
            return {}
        return {r.file_name: r for r in open_results(self.ctx.viewer, self.ctx.state.automatic, names=[self.shown])}

    # ---- the whole folder -----------------------------------------------------------------
    def run_folder(self):
        """Compute every image of the folder into the feature cache (worker, progress, Cancel)."""
        from freesolo_napari.workers import create_worker

        if self.session is None:
            self.ctx.notify("Open a folder first (Open folder…).")
            return None
        self.save_current_edits()
        worker = create_worker(self, _run_folder, self.ctx.extractor_source(), self.session, _ignore_errors=True)
        worker.yielded.connect(self._on_folder_step)
        worker.finished.connect(self._show_step)  # before the batch's end counts the images done
        return self.batch.start_batch(worker, len(self.session),
                                      f"Computing {len(self.session)} image(s) of the folder…", on_done=self._folder_done)

    def _on_folder_step(self, item) -> None:
        kind = item[0]
        if kind == "failed":
            self.ctx.notify(f"Skipped: {item[1]}")
        elif kind == "progress":
            self._step = None
            self.batch.step(item[1], item[2])
        else:
            _kind, done, total, name, hit, extractor, generation = item
            self.ctx.state.adopt_extractor(extractor, generation)  # backbone_calls counts what the folder ran
            self._step = (done, total, name, hit)
            if not self._step_timer.isActive():  # cached images arrive faster than a person reads
                self._show_step()
                self._step_timer.start()

    def _show_step(self) -> None:
        """Show the latest step of a folder run (at most every STEP_SHOW_MS, and when the run ends)."""
        if self._step is None:
            return
        done, total, name, hit = self._step
        self._step = None
        self.batch.step(done, total)
        self.ctx.set_status(f"{done} / {total} · {name}" + (" (cached)" if hit else ""))

    def _folder_done(self, cancelled: bool) -> None:
        """The image on screen gets its masks now if it had none (from the cache, in a worker:
        the image layer stays where it is, so the viewer does not rebuild its scene)."""
        from freesolo_napari.workers import create_worker

        s, name, viewer = self.session, self.shown, self.ctx.viewer
        if s is None or name is None or name not in viewer.layers or labels_name(name) in viewer.layers:
            return
        image = np.asarray(layer_array(viewer.layers[name]))
        worker = create_worker(self, _masks_from_cache, s, s.path, name, image, self.ctx.feature_config(),
                               *self._settings(), self.ctx.current_tiling(), _ignore_errors=True)
        worker.returned.connect(lambda out: self._on_cached_masks(image, out))
        worker.errored.connect(self.ctx.report_error)
        worker.finished.connect(lambda: self._loaders.remove(worker) if worker in self._loaders else None)
        self._loaders.append(worker)
        worker.start()

    def _on_cached_masks(self, image: np.ndarray, out) -> None:
        if out is None:
            return  # not in the cache (a failed image)
        feats, update = out
        if self.shown != update.name or update.name not in self.ctx.viewer.layers:
            return  # the user moved on
        self.ctx.state.store_features(update.name, image, feats)
        self.ctx.show_update(update)


def _masks_from_cache(session: FolderSession, path: Path, name: str, image: np.ndarray, config, params, generators,
                      tiling=(None, 0)):
    """Worker body: (features, masks update) of the image on screen from the cache (None if not cached)."""
    feats = session.cached_features(path, config, image, tiling)
    if feats is None:
        return None
    return feats, freemask_update(name, feats, params, image, generators=generators)


def _load(session: FolderSession, index: int, config, params, generators, from_round=None, tiling=(None, 0)):
    """Worker body: image, cached features (the windows' with ``tiling``), stored edits and (if no edits)
    the masks update of the chosen generators, or ``from_round`` (a loaded round's ImageResult) when it
    fits the image."""
    from engine.io.images import ImageLoadError, load_image

    path = session.paths[index]
    try:
        image = load_image(path)
        feats = session.cached_features(path, config, image, tiling)
        edits = session.load_edits(path)
        shown = (image.shape[:2], preview_shape(image.shape, preview_factor(image.shape)))  # full size or preview
        if edits is not None and edits.labels.shape not in shown:
            edits = None
        if from_round is not None and (edits is not None or (from_round.height, from_round.width) != image.shape[:2]):
            from_round = None
        update = (freemask_update(session.names[index], feats, params, image, generators=generators)
                  if feats is not None and edits is None and from_round is None else None)
    except (ImageLoadError, OSError, RuntimeError, ValueError) as exc:
        return index, None, None, None, None, str(exc), None
    return index, image, feats, update, edits, None, from_round


def _run_folder(source, session: FolderSession):
    """Worker body: features of every image into the cache; bad files reported one by one."""
    from engine.runtime.batch import BatchReport, iter_batch

    report = BatchReport()
    at = {"i": 0, "n": len(session)}

    def progress(i, n, _name):
        at.update(i=i, n=n)

    reported = 0
    notes = _skips(session)
    for path, why in notes[:MAX_SKIP_NOTES]:
        yield "failed", f"'{Path(path).name}': {why}"
    if len(notes) > MAX_SKIP_NOTES:
        yield "failed", f"{len(notes) - MAX_SKIP_NOTES} more entries that are not images"
    for name, path, image in iter_batch([session.folder], report, progress):
        for _bad, why in report.failures[reported:]:
            yield "failed", why
        reported = len(report.failures)
        try:
            _feats, hit = session.features(path, image, source.get(), source.tiling)
        except (OSError, RuntimeError, ValueError) as exc:  # e.g. out of memory on a huge image
            yield "failed", f"'{name}': {type(exc).__name__}: {exc}"
            continue
        yield "done", at["i"] + 1, at["n"], name, hit, source.extractor, source.generation
    for _bad, why in report.failures[reported:]:
        yield "failed", why
    if not report.cancelled:
        yield "progress", at["n"], at["n"]


def _skips(session: FolderSession):
    """Entries of the folder that are not images (hidden files are not worth a message)."""
    return [(str(p), why) for p, why in session.skipped if not why.startswith("hidden")]
