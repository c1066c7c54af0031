"""The correction loop of the Self-training section: train with my corrections, next image to fix.

**Train with my corrections** writes the corrected images (edited or imported masks: the open
images and the folder's stored edits, ``freesolo_napari.corrections``) as trusted labels,
``RUN/corrections/round_K_trusted.json``, in a worker, then runs the next round of the run folder
with ``--labels`` (``selftrain --rounds K --resume``: earlier rounds are kept; a new run folder gets
the section's rounds). When the round ends its predictions are previewed over the open images
(``round_loader``); accepting them puts them on the open images and the folder's, except images you
corrected, which keep your masks.

**Next image to fix** ranks the folder's images by how unsure the newest round's model is
(``freesolo next-to-fix`` in a separate process, written to ``RUN/round_K/next_to_fix.json`` and
reused while the model is unchanged; a stack's planes are ranked one by one, ``movie.tif[t=1]``),
skips the corrected images (and planes) and opens the most uncertain of the others: in the folder
browser, or, for a plane, its stack (opened with napari's reader if it is not open) with napari's
dims sliders on that plane; the line under the buttons says its score and rank.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import QProcess
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from engine.io.stacks import split_plane_name
from freesolo_napari.corrections import Trusted, pick_next, ranked_files, read_ranking, write_trusted
from freesolo_napari.sections.trainer_process import is_running, launch, stop_process


class CorrectionLoop(QWidget):
    """Two buttons and a status line; ``training`` is the Self-training section, ``folder`` the folder browser."""

    def __init__(self, ctx, training, folder=None):
        super().__init__()
        self.ctx, self.training, self.folder = ctx, training, folder
        self.pending_round: int | None = None  # the round started with corrections, loaded when it ends
        self.trusted: Trusted | None = None  # what the last Train with my corrections wrote
        self.picked = None  # corrections.NextToFix of the last Next image to fix
        self.ranker: QProcess | None = None
        self._stop_asked = False  # the ranking was stopped by the button, not failed
        self._workers: list = []
        self.train_button = QPushButton("Train with my corrections", toolTip="Train the next round with the images "
                                        "you edited or imported as trusted labels; the others keep learning "
                                        "from predictions. The round's masks come as a preview to accept; your "
                                        "masks are always kept.")
        self.next_button = QPushButton("Next image to fix", toolTip="Open the uncorrected folder image (or stack "
                                       "plane) the newest round's model is least sure about (ranked in a separate "
                                       "process)")
        self.status = QLabel("", wordWrap=True)
        self.train_button.clicked.connect(lambda: self.train_with_corrections())
        self.next_button.clicked.connect(self._next_clicked)
        training.ended.connect(self._round_ended)
        row = QHBoxLayout()
        row.addWidget(self.train_button)
        row.addWidget(self.next_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.status)

    def _say(self, text: str) -> None:
        self.status.setText(text)
        self.ctx.set_status(text)

    def _session(self):
        return self.folder.session if self.folder is not None else None

    def _start_worker(self, fn, *args, on_return) -> object:
        from freesolo_napari.workers import create_worker

        worker = create_worker(self, fn, *args, _ignore_errors=True)
        worker.returned.connect(on_return)
        worker.errored.connect(lambda exc: self.ctx.notify(f"Correction loop: {exc}"))
        worker.finished.connect(lambda: self._workers.remove(worker) if worker in self._workers else None)
        self._workers.append(worker)
        worker.start()
        return worker

    def _edited_open_results(self) -> list:
        """The open images whose masks the user edited or imported, as they are painted now; of a
        stack, each edited plane (``stack.tif[z=3]``), the others are not corrections."""
        from napari.layers import Image

        from freesolo_napari.exchange import open_results, stack_results
        from freesolo_napari.layers import labels_name
        from freesolo_napari.stack_layers import computed_planes

        viewer, review, automatic = self.ctx.viewer, self.ctx.review, self.ctx.state.automatic
        flat, planes = [], []
        for layer in viewer.layers:
            if not isinstance(layer, Image) or labels_name(layer.name) not in viewer.layers:
                continue
            labels = viewer.layers[labels_name(layer.name)]
            if labels.data.ndim == 2:
                flat += [layer.name] if review.is_edited(layer.name) else []
                continue
            edited = [index for index in computed_planes(labels) if review.is_edited(layer.name, index)]
            planes += stack_results(layer, labels, automatic.get(layer.name), edited) if edited else []
        return (open_results(viewer, automatic, names=flat) if flat else []) + planes

    # ---- train with my corrections --------------------------------------------------------
    def _plan(self):
        """(run layout, round K, resume, rounds of the command, training images) or a ValueError."""
        t = self.training
        if t.is_running():
            raise ValueError("training is running: wait for it (or Cancel it) first")
        images = t.images_folder()
        run = t.run_folder()
        if run is None:
            raise ValueError("choose an output (run) folder")
        if not run.has_run():
            return run, 1, False, t.rounds.value(), images
        unfinished = run.unfinished_round()
        if unfinished is not None:
            raise ValueError(f"round {unfinished} of {run.root} is unfinished: press Resume to finish it first")
        k = max(run.finished_rounds()) + 1
        return run, k, True, k, images

    def train_with_corrections(self):
        """Write the trusted labels (worker), then start the next round with them; returns the worker."""
        session = self._session()
        if self.training.images_edit.text().strip() == "" and session is not None:
            self.training.images_edit.setText(str(session.folder))  # the open folder is what you correct
        try:
            run, k, resume, rounds, images = self._plan()
        except ValueError as exc:
            self.ctx.notify(f"Train with my corrections: {exc}")
            return None
        if self.folder is not None:
            self.folder.save_current_edits()
        self.train_button.setEnabled(False)
        self._say(f"Writing your corrections for round {k}…")
        return self._start_worker(write_trusted, run.corrections(k), self._edited_open_results(), session, images,
                                  on_return=lambda trusted: self._trusted_written(trusted, k, resume, rounds))

    def _trusted_written(self, trusted: Trusted, k: int, resume: bool, rounds: int) -> None:
        self.trusted = trusted
        self.train_button.setEnabled(not self.training.is_running())
        missing = f"; not in the training folder: {', '.join(trusted.left_out[:3])}" if trusted.left_out else ""
        if trusted.path is None:
            self.ctx.notify("Train with my corrections: no corrected image yet (edit or import masks of the "
                            f"training images first){missing}")
            return
        if not self.training.start(resume=resume, rounds=rounds, labels=trusted.path):
            return
        self.pending_round = rounds
        self._say(f"Round {k}: training with {len(trusted.names)} corrected image(s) as trusted labels "
                  f"({trusted.path.name}){missing}")

    def _round_ended(self, state: str) -> None:
        k, self.pending_round = self.pending_round, None
        if k is None:
            return
        if state == "finished":
            self.training.rounds_view.load(k)
            self.status.setText(f"Round {k} finished: its masks are shown as a preview (outlined); Accept round {k} "
                                "puts them on the images you did not correct, Discard keeps what is on screen.")
        else:
            self.status.setText(f"Round {k} {state}: nothing loaded (Resume continues it).")

    # ---- next image to fix ----------------------------------------------------------------
    def _next_clicked(self) -> None:
        if is_running(self.ranker):
            self.stop_ranking()
        else:
            self.next_image()

    def next_image(self):
        """Rank the folder by the newest model (a process, or the saved ranking), then open the next image."""
        run = self.training.run_folder()
        k = run.latest_model() if run is not None else None
        if k is None:
            self.ctx.notify("Next image to fix: no trained round in the run folder yet (train first)")
            return None
        if self._session() is None:  # open the training folder first, then rank it
            return self._open_training_folder()
        self.folder.save_current_edits()
        session, ranking = self._session(), run.ranking(k)
        if _fresh(ranking, run.model(k), session.names):
            return self._pick(k, ranking)
        device = self.training.model.device_name() if self.training.model is not None else "auto"
        args = ["-m", "engine.cli", "next-to-fix", str(run.model(k)), str(session.folder), "--json", str(ranking),
                "--device", device]
        proc = launch(self, args)
        self.destroyed.connect(lambda *_a, p=proc: stop_process(p, 2000))  # the panel goes away: so does the ranking
        proc.finished.connect(lambda code, _status=None: self._ranked(proc, k, ranking, code))
        self.ranker, self._stop_asked = proc, False
        self.next_button.setText("Stop ranking")
        self._say(f"Ranking {len(session)} image(s) by how unsure round {k}'s model is…")
        proc.start()
        return proc

    def _open_training_folder(self):
        """Open the training images in the folder browser, then go on with Next image to fix (the
        listing's worker; None with a message if there is no such folder)."""
        if self.folder is None:
            self.ctx.notify("Next image to fix: open a folder first")
            return None
        try:
            images = self.training.images_folder()
        except ValueError as exc:
            self.ctx.notify(f"Next image to fix: open a folder first ({exc})")
            return None
        return self.folder.open_folder(images, then=lambda _session: self.next_image())

    def _ranked(self, proc: QProcess, k: int, ranking: Path, code: int) -> None:
        self.next_button.setText("Next image to fix")
        if self._stop_asked:
            self._say("Ranking stopped.")
            return
        if code != 0 or not ranking.is_file():
            why = bytes(proc.readAllStandardError()).decode("utf-8", "replace").strip().splitlines()
            self.ctx.notify(f"Next image to fix: ranking failed ({why[-1] if why else f'exit code {code}'})")
            return
        self._pick(k, ranking)

    def _pick(self, k: int, ranking: Path):
        return self._start_worker(pick_next, ranking, self._session(), self._edited_open_results(),
                                  on_return=lambda picked: self._show_pick(k, picked))

    def _show_pick(self, k: int, picked) -> None:
        self.picked = picked
        if picked is None:
            self._say("Every image of the folder is corrected: nothing left to fix.")
            return
        plane = split_plane_name(picked.file_name)[1]
        shown = show_plane(self.ctx, self._session(), picked.file_name) if plane.index else None
        if shown is None and (self.folder is None or self.folder.show_name(picked.file_name) is None):
            self.ctx.notify(f"Next image to fix: '{picked.file_name}' is not in the open folder")
            return
        skipped = f"; {picked.skipped} corrected image(s) ranked above it skipped" if picked.skipped else ""
        self.status.setText(f"Next to fix: '{picked.file_name}', uncertainty {picked.uncertainty:.3f} "
                            f"(rank {picked.rank} of {picked.total} by round {k}'s model{skipped})")

    def stop_ranking(self) -> None:
        if is_running(self.ranker):
            self._stop_asked = True
            stop_process(self.ranker, 2000, block=False)


def _fresh(ranking: Path, model: Path, names: list[str]) -> bool:
    """Whether a saved ranking is of this model (written after it) and of exactly these image files."""
    try:
        if ranking.stat().st_mtime < model.stat().st_mtime:
            return False
        return ranked_files(read_ranking(ranking)) == set(names)
    except (OSError, ValueError):
        return False


def show_plane(ctx, session, file_name: str):
    """Show plane ``movie.tif[t=1]`` of the ranked folder: its stack's layer (opened with napari's reader
    if it is not open) becomes the panel's image and napari's dims sliders move to the plane; returns
    the layer, or None when no open stack (or folder file) has that plane."""
    from freesolo_napari.exchange import find_image_layer, image_layers_by_file
    from freesolo_napari.planes import plane_view

    viewer = ctx.viewer
    layer, plane = find_image_layer(image_layers_by_file(viewer), file_name)
    base = split_plane_name(file_name)[0]
    if layer is None and session is not None and base in session.names:
        opened = viewer.open(str(session.paths[session.names.index(base)]), plugin="napari")
        layer = opened[0] if opened else None
    view = plane_view(viewer, layer, ctx.state, plane) if layer is not None else None
    if view is None:
        return None
    first = viewer.dims.ndim - layer.ndim  # the layer's axes are the viewer's last ones
    for axis, (i, scale, shift) in enumerate(zip(view.index, layer.scale, layer.translate)):
        viewer.dims.set_point(first + axis, i * scale + shift)
    viewer.layers.selection.active = layer
    ctx.select_image(layer.name)
    return layer
