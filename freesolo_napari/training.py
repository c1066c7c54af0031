"""The panel's Self-training section: ``freesolo selftrain`` in a separate process, watched live.

Training never runs in napari's process: Start launches ``python -m engine.cli selftrain ...
--progress json`` with ``QProcess`` and reads its JSON progress lines as they arrive (Qt's event
loop, no blocking). The process gets one core less than the machine has (``OMP_NUM_THREADS``,
unless you set it), so the viewer keeps a core. The loss curve is painted from the run's ``round_K/log.jsonl``, read
incrementally by a timer. Cancel sends SIGINT (the trainer finishes its iteration and saves a
checkpoint), then kills the process if it has not ended after a timeout; Resume reruns the same
command with ``--resume`` on the same output folder. Finished rounds can be loaded onto the
open images whose file names match (``source`` "model round K" in the masks' table).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from qtpy.QtCore import QPointF, QProcess, QProcessEnvironment, Qt, QTimer
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from engine.solo.train import TrainConfig
from freesolo_napari.section import Section

KILL_AFTER_MS = 20_000  # Cancel: SIGINT first, kill if the process is still there after this
POLL_MS = 400
LOG_LINES = 200


def round_predictions(out: Path, k: int) -> Path:
    return out / "round_0" / "coarse.json" if k == 0 else out / f"round_{k}" / "predictions.json"


def finished_rounds(out: Path) -> list[int]:
    """Rounds of a run folder whose masks exist (round 0 = Free Mask's coarse masks)."""
    if not out.is_dir():
        return []
    ks = sorted(int(p.name[6:]) for p in out.glob("round_*") if p.name[6:].isdigit())
    return [k for k in ks if round_predictions(out, k).is_file()]


class LossCurve(QWidget):
    """The training loss per iteration (total, mask, category), painted like the maskness histogram."""

    SERIES = (("total", QColor(230, 230, 230)), ("mask", QColor(240, 160, 60)), ("category", QColor(110, 200, 120)))

    def __init__(self):
        super().__init__(toolTip="Training loss per iteration of the current round (white total, orange mask, "
                         "green category), read live from the run's log.jsonl")
        self.setMinimumHeight(90)
        self.iters: list[int] = []
        self.values: dict[str, list[float]] = {k: [] for k, _c in self.SERIES}
        self._path: Path | None = None
        self._offset = 0

    def watch(self, path: Path | None) -> None:
        """Follow ``path`` (a log.jsonl) from its beginning."""
        if path != self._path:
            self._path, self._offset = path, 0
            self.iters = []
            self.values = {k: [] for k, _c in self.SERIES}
            self.update()
        self.poll()

    def poll(self) -> None:
        """Read the lines appended since the last call (complete lines only)."""
        if self._path is None or not self._path.is_file():
            return
        with self._path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        if end <= 0:
            return
        self._offset += end
        for line in chunk[:end].decode("utf-8", "replace").splitlines():
            try:
                row = json.loads(line)
                it = int(row["iter"])
            except (ValueError, KeyError, TypeError):
                continue
            if self.iters and it <= self.iters[-1]:  # a resumed run may repeat iterations after its checkpoint
                cut = next(i for i, old in enumerate(self.iters) if old >= it)
                self.iters = self.iters[:cut]
                self.values = {k: v[:cut] for k, v in self.values.items()}
            self.iters.append(it)
            for key in self.values:
                self.values[key].append(float(row.get(key, float("nan"))))
        self.update()

    def paintEvent(self, _event) -> None:  # noqa: N802 (Qt's name)
        p = QPainter(self)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QColor(30, 30, 34))
        finite = [v for vals in self.values.values() for v in vals if v == v]
        if len(self.iters) >= 1 and finite:
            top, x0, x1 = max(finite) or 1.0, self.iters[0], max(self.iters[-1], self.iters[0] + 1)
            for key, colour in self.SERIES:
                pts = [QPointF(4 + (w - 8) * (i - x0) / (x1 - x0), h - 14 - (h - 20) * v / top)
                       for i, v in zip(self.iters, self.values[key]) if v == v]
                p.setPen(QPen(colour, 1.5))
                p.drawPolyline(QPolygonF(pts))
            p.setPen(QColor(200, 200, 200))
            p.drawText(4, 12, f"{top:.2f}")
            p.drawText(4, h - 2, f"iteration {self.iters[0]}…{self.iters[-1]}, total {self.values['total'][-1]:.3f}")
        else:
            p.setPen(QColor(150, 150, 150))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "loss curve (starts with training)")
        p.end()


class TrainingSection(Section):
    """Folder, rounds, iterations, keep threshold, preset, output; Start / Cancel / Resume; live progress."""

    def __init__(self, panel):
        body = QWidget()
        super().__init__("Self-training", body, "Show or hide self-training (Free Mask -> SOLO rounds, "
                         "run in a separate process)")
        self.panel = panel
        self.images_edit = QLineEdit(placeholderText="folder of training images",
                                     toolTip="Folder of images to self-train on (non-images are skipped)")
        self.images_button = QPushButton("…", toolTip="Choose the folder of training images")
        self.rounds = QSpinBox(minimum=1, maximum=20, value=2, toolTip="SOLO rounds: round 1 trains on Free Mask's "
                               "masks, round K on round K-1's confident predictions")
        self.iters = QSpinBox(minimum=1, maximum=1_000_000, value=TrainConfig().iters, singleStep=50,
                              toolTip="Training iterations per round")
        self.size = QSpinBox(minimum=64, maximum=2048, value=320, singleStep=32,
                             toolTip="Training image size (long side, pixels); smaller trains faster")
        self.keep_thr = QDoubleSpinBox(minimum=0.0, maximum=1.0, singleStep=0.05, value=0.3, decimals=2,
                                       toolTip="Predictions scoring at least this become the next round's masks")
        self.preset = QComboBox(toolTip="SOLO size: cpu-small (grids 24/16/12, 64-d; for CPUs) or paper "
                                "(grids 40/36/24/16/12, 256-d)")
        self.preset.addItems(["cpu-small", "paper"])
        self.out_edit = QLineEdit(placeholderText="run folder (round_0, round_1, …)",
                                  toolTip="Run folder: models, checkpoints, logs and predictions of every round")
        self.out_button = QPushButton("…", toolTip="Choose the run folder")
        self.start_button = QPushButton("Start", toolTip="Start self-training in a separate process")
        self.cancel_button = QPushButton("Cancel", enabled=False,
                                         toolTip="Stop training: the trainer saves a checkpoint first (Resume continues)")
        self.resume_button = QPushButton("Resume", toolTip="Continue the run in the output folder from its "
                                         "last checkpoint (finished rounds are kept)")
        self.progress_label = QLabel("Not running.", wordWrap=True)
        self.progress = QProgressBar(minimum=0, maximum=1, value=0, toolTip="Iterations of the current round")
        self.curve = LossCurve()
        self.log_view = QPlainTextEdit(readOnly=True, toolTip="The last lines the training process wrote")
        self.log_view.setMaximumBlockCount(LOG_LINES)
        self.log_view.setMaximumHeight(90)
        self.round_combo = QComboBox(toolTip="A finished round of the run folder (0 = Free Mask's coarse masks)")
        self.round_combo.setProperty("persist", False)  # follows the run folder
        self.load_button = QPushButton("Load round predictions", enabled=False,
                                       toolTip="Show the chosen round's masks on the open images with the same file names")
        self.process: QProcess | None = None
        self.state = "idle"  # idle | running | stopping | stopped | finished | failed
        self.round = self.rounds_total = self.iteration = self.iters_total = 0
        self.events: list[dict] = []
        self.shown_round: tuple[int, int] | None = None  # (round, images shown) of the last load
        self._out: Path | None = None
        self._buffer = b""
        self._stderr_tail: list[str] = []
        self._workers: list = []
        self._poll = QTimer(self, interval=POLL_MS)
        self._poll.timeout.connect(self.curve.poll)
        self._kill_timer = QTimer(self, singleShot=True, interval=KILL_AFTER_MS)
        self._kill_timer.timeout.connect(self._kill)

        self.images_button.clicked.connect(lambda: self._pick_folder(self.images_edit, "Training images"))
        self.out_button.clicked.connect(lambda: self._pick_folder(self.out_edit, "Run folder"))
        self.out_edit.textChanged.connect(lambda _t: self.refresh_rounds())
        self.start_button.clicked.connect(lambda: self.start())
        self.cancel_button.clicked.connect(self.cancel)
        self.resume_button.clicked.connect(lambda: self.start(resume=True))
        self.load_button.clicked.connect(lambda: self.load_round())
        self.round_combo.currentIndexChanged.connect(self._round_picked)
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("images", _row(self.images_edit, self.images_button))
        form.addRow("rounds", self.rounds)
        form.addRow("iterations", self.iters)
        form.addRow("size", self.size)
        form.addRow("keep ≥", self.keep_thr)
        form.addRow("preset", self.preset)
        form.addRow("output", _row(self.out_edit, self.out_button))
        layout = QVBoxLayout(body)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addLayout(_row(self.start_button, self.cancel_button, self.resume_button, stretch=False))
        layout.addWidget(self.progress_label)
        layout.addWidget(self.progress)
        layout.addWidget(self.curve)
        layout.addWidget(self.log_view)
        layout.addLayout(_row(self.round_combo, self.load_button))
        self._set_running(False)
        app = _app()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)

    # ---- starting -------------------------------------------------------------------------
    def command(self, resume: bool = False) -> list[str]:
        """The ``engine.cli selftrain`` arguments for the current fields (validated)."""
        images = Path(self.images_edit.text().strip()).expanduser()
        out_text = self.out_edit.text().strip()
        if not self.images_edit.text().strip() or not images.is_dir():
            raise ValueError(f"training images: {images} is not a folder" if self.images_edit.text().strip()
                             else "choose the folder of training images")
        if not out_text:
            raise ValueError("choose an output (run) folder")
        out = Path(out_text).expanduser()
        if resume and not (out / "round_0").is_dir():
            raise ValueError(f"{out} holds no earlier run to resume; press Start")
        if not resume and out.is_dir() and any(out.glob("round_*")):
            raise ValueError(f"{out} already holds a run: press Resume to continue it, or choose another output folder")
        device = self.panel.model.device_name() if hasattr(self.panel, "model") else "auto"
        args = ["-m", "engine.cli", "selftrain", str(images), "--out", str(out), "--rounds", str(self.rounds.value()),
                "--iters", str(self.iters.value()), "--size", str(self.size.value()),
                "--keep-thr", f"{self.keep_thr.value():g}", "--preset", self.preset.currentText(),
                "--device", device, "--progress", "json"]
        return args + (["--resume"] if resume else [])

    def start(self, resume: bool = False) -> bool:
        """Launch the training process; a bad field is one notification and nothing starts."""
        if self.is_running():
            return False
        try:
            args = self.command(resume)
        except ValueError as exc:
            self.panel._notify(f"Self-training: {exc}")
            return False
        self._out = Path(args[args.index("--out") + 1])
        self.events, self._buffer, self._stderr_tail = [], b"", []
        self.round = self.iteration = 0
        self.rounds_total, self.iters_total = self.rounds.value(), self.iters.value()
        proc = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        root = str(Path(__file__).resolve().parents[1])  # engine/ is importable even without an install
        env.insert("PYTHONPATH", os.pathsep.join(p for p in (root, env.value("PYTHONPATH", "")) if p))
        env.insert("PYTHONUNBUFFERED", "1")
        if not env.contains("OMP_NUM_THREADS"):  # leave one core to the viewer (and no oversubscription)
            from engine.device import available_cpu_count

            env.insert("OMP_NUM_THREADS", str(max(1, available_cpu_count() - 1)))
        proc.setProcessEnvironment(env)
        proc.setProgram(sys.executable)
        proc.setArguments(args)
        proc.readyReadStandardOutput.connect(self._read_stdout)
        proc.readyReadStandardError.connect(self._read_stderr)
        proc.finished.connect(self._finished)
        proc.errorOccurred.connect(self._process_error)
        self.process = proc
        # the section goes away (viewer closed): stop the trainer with a checkpoint before Qt kills it
        self.destroyed.connect(lambda *_a, p=proc: stop_process(p))
        self.state = "running"
        self.log_view.appendPlainText(("resuming: " if resume else "starting: ") + " ".join(args[2:]))
        self.progress_label.setText("Starting the training process…")
        self._set_running(True)
        proc.start()
        self._poll.start()
        return True

    def is_running(self) -> bool:
        return self.process is not None and self.process.state() != QProcess.ProcessState.NotRunning

    # ---- stopping -------------------------------------------------------------------------
    def cancel(self) -> None:
        """SIGINT: the trainer ends its iteration and saves a checkpoint; killed after a timeout."""
        if not self.is_running():
            return
        self.state = "stopping"
        self.progress_label.setText("Stopping: the trainer saves a checkpoint…")
        self.cancel_button.setEnabled(False)
        pid = int(self.process.processId())
        if hasattr(signal, "SIGINT") and os.name == "posix" and pid > 0:
            os.kill(pid, signal.SIGINT)
        else:  # no SIGINT to send (Windows): ask the process to end
            self.process.terminate()
        self._kill_timer.start()

    def _kill(self) -> None:
        if self.is_running():
            self.log_view.appendPlainText(f"the process did not stop within {KILL_AFTER_MS / 1000:.0f}s: killed")
            self.process.kill()

    def shutdown(self, wait_ms: int = 10_000) -> None:
        """Stop a running process before the application quits (checkpoint first)."""
        if self.process is not None:
            stop_process(self.process, wait_ms)

    # ---- reading the process ----------------------------------------------------------------
    def _read_stdout(self) -> None:
        self._buffer += bytes(self.process.readAllStandardOutput())
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith("{"):
                try:
                    self._event(json.loads(line))
                    continue
                except ValueError:
                    pass
            if line:
                self.log_view.appendPlainText(line)

    def _read_stderr(self) -> None:
        text = bytes(self.process.readAllStandardError()).decode("utf-8", "replace")
        for line in text.replace("\r", "\n").splitlines():
            if line.strip():
                self._stderr_tail = (self._stderr_tail + [line.strip()])[-20:]
                self.log_view.appendPlainText(line.rstrip())

    def _event(self, ev: dict) -> None:
        self.events.append(ev)
        kind = ev.get("event")
        if "round" in ev:
            self.round = int(ev["round"])
        self.rounds_total = int(ev.get("rounds", self.rounds_total))
        phase = ev.get("phase", "")
        where = f"round {self.round}/{self.rounds_total}"
        if kind == "phase" and phase == "train":
            self.iters_total = int(ev.get("iters", self.iters_total))
            self.curve.watch(self._out / f"round_{self.round}" / "log.jsonl")
            self.progress_label.setText(f"{where} · training SOLO")
        elif kind == "phase":
            self.progress_label.setText(f"{where} · {'Free Mask' if phase == 'freemask' else 'predicting'}")
        elif kind == "progress":
            done, total = int(ev["done"]), max(int(ev["total"]), 1)
            self.progress.setMaximum(total)
            self.progress.setValue(done)
            if phase == "train":
                self.iteration, self.iters_total = done, total
                loss = ev.get("loss", {}).get("total")
                self.progress_label.setText(f"{where} · iteration {done}/{total}"
                                            + (f" · loss {loss:.3f}" if loss is not None else ""))
            else:
                what = "Free Mask" if phase == "freemask" else "predicting"
                self.progress_label.setText(f"{where} · {what} image {min(done + 1, total)}/{total}")
        elif kind == "round_done":
            self.log_view.appendPlainText(f"round {self.round} done: {ev.get('path', '')}")
            self.refresh_rounds()
        elif kind == "message":
            self.log_view.appendPlainText(str(ev.get("text", "")))
        elif kind == "stopped":
            self.log_view.appendPlainText(f"stopped in round {self.round} ({phase})")

    def _finished(self, code: int, _status=None) -> None:
        self._poll.stop()
        self._kill_timer.stop()
        if self.process is not None:
            self._read_stdout()
        self.curve.poll()
        stopping = self.state == "stopping"
        if code == 0:
            self.state = "finished"
            self.progress_label.setText(f"Finished {self.rounds_total} round(s) in {self._out}")
            self._offer_model()
        elif stopping or code == 130:
            self.state = "stopped"
            self.progress_label.setText(f"Stopped in round {self.round} at iteration {self.iteration}: "
                                        "a checkpoint is saved; press Resume to continue")
        else:
            self.state = "failed"
            why = self._stderr_tail[-1] if self._stderr_tail else f"exit code {code}"
            self.progress_label.setText("Self-training failed (see the log above).")
            self.panel._notify(f"Self-training failed: {why}")
        self.refresh_rounds()
        self._set_running(False)

    def _process_error(self, error) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self.state = "failed"
            self._poll.stop()
            self._set_running(False)
            self.panel._notify(f"Self-training could not start {sys.executable}: {self.process.errorString()}")

    def _offer_model(self) -> None:
        """After a finished run, the last round's model is the one 'Predict with model' uses."""
        model = getattr(self.panel, "model", None)
        last = self._out / f"round_{self.rounds_total}" / "model.pt" if self._out else None
        if model is not None and last is not None and last.is_file():
            model.model_path.setText(str(last))

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.resume_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        for w in (self.images_edit, self.images_button, self.out_edit, self.out_button, self.rounds, self.iters,
                  self.size, self.keep_thr, self.preset):
            w.setEnabled(not running)

    # ---- finished rounds ------------------------------------------------------------------
    def refresh_rounds(self) -> list[int]:
        text = self.out_edit.text().strip()
        ks = finished_rounds(Path(text).expanduser()) if text else []
        before = [self.round_combo.itemData(i) for i in range(self.round_combo.count())]
        if ks == before:
            return ks
        self.round_combo.clear()
        for k in ks:
            self.round_combo.addItem(f"round {k} ({'Free Mask' if k == 0 else 'SOLO'})", k)
        if ks:
            self.round_combo.setCurrentIndex(len(ks) - 1)  # the newest round
        self.load_button.setEnabled(bool(ks))
        self.load_button.setText(f"Load round {ks[self.round_combo.currentIndex()]} predictions" if ks
                                 else "Load round predictions")
        return ks

    def _round_picked(self, index: int) -> None:
        k = self.round_combo.itemData(index)
        if k is not None:
            self.load_button.setText(f"Load round {k} predictions")

    def load_round(self, k: int | None = None):
        """Decode round ``k``'s COCO file in a worker, then show it on the matching open images."""
        from freesolo_napari.workers import create_worker

        k = self.round_combo.currentData() if k is None else k
        out = Path(self.out_edit.text().strip()).expanduser()
        path = round_predictions(out, int(k)) if k is not None else None
        if path is None or not path.is_file():
            self.panel._notify(f"No predictions for round {k} in {out}")
            return None
        source = "freemask round 0" if k == 0 else f"model round {k}"
        worker = create_worker(self, _read_round, path, source, _ignore_errors=True)
        worker.returned.connect(lambda payload: self._show_round(int(k), *payload))
        worker.errored.connect(lambda exc: self.panel._notify(f"Cannot read {path}: {exc}"))
        self._workers.append(worker)
        worker.finished.connect(lambda: self._workers.remove(worker) if worker in self._workers else None)
        worker.start()
        return worker

    def _show_round(self, k: int, results: dict, problems: list[str]) -> None:
        from freesolo_napari.exchange import image_file_name
        from freesolo_napari.model_controls import show_on_layer
        from napari.layers import Image

        import numpy as np

        layers = {}
        for layer in self.panel.viewer.layers:
            if isinstance(layer, Image):
                for key in (image_file_name(layer), Path(image_file_name(layer)).stem, layer.name):
                    layers.setdefault(key, layer)
        shown = 0
        for name, res in results.items():
            layer = layers.get(name) or layers.get(Path(name).name) or layers.get(Path(name).stem)
            if layer is None or np.asarray(layer.data).shape[:2] != (res.height, res.width):
                continue
            shown += int(show_on_layer(self.panel, layer.name, res.instances))
        text = f"Round {k}: masks shown on {shown} of {len(results)} image(s) of the run"
        if not shown:
            text += " (open the training images to see them)"
        if problems:
            text += f"; {len(problems)} entries skipped"
        self.panel.status.setText(text)
        self.shown_round = (k, shown)

    @staticmethod
    def _pick_folder(edit: QLineEdit, title: str) -> None:
        path = QFileDialog.getExistingDirectory(edit, title, edit.text())
        if path:
            edit.setText(path)


def stop_process(proc: QProcess, wait_ms: int = 10_000) -> None:
    """SIGINT (the trainer saves a checkpoint), wait up to ``wait_ms``, then kill. Blocks."""
    try:
        if proc.state() == QProcess.ProcessState.NotRunning:
            return
        pid = int(proc.processId())
        if os.name == "posix" and pid > 0:
            os.kill(pid, signal.SIGINT)
        else:
            proc.terminate()
        if not proc.waitForFinished(wait_ms):
            proc.kill()
            proc.waitForFinished(2000)
    except (RuntimeError, ProcessLookupError):  # already gone
        pass


def _read_round(path: Path, source: str):
    from engine.coco import load_image_results

    problems: list[str] = []
    return load_image_results(path, source=source, problems=problems), problems


def _row(*widgets, stretch: bool = True) -> QHBoxLayout:
    row = QHBoxLayout()
    for i, w in enumerate(widgets):
        row.addWidget(w, 1 if stretch and i == 0 else 0)
    return row


def _app():
    from qtpy.QtWidgets import QApplication

    return QApplication.instance()
