"""The panel's Self-training section: ``freesolo selftrain`` in a separate process, watched live.

Training never runs in napari's process: Start launches ``python -m engine.cli selftrain ...
--progress json`` with ``QProcess`` and reads its JSON progress lines as they arrive (Qt's event
loop, no blocking; the protocol is ``engine.selftrain.events``). The process gets one core less
than the machine has (``OMP_NUM_THREADS``, unless you set it), so the viewer keeps a core. The
loss curve is painted from the run's ``round_K/log.jsonl``, read incrementally by a timer. Cancel
sends SIGINT (the trainer finishes its iteration and saves a checkpoint), then kills the process
if it has not ended after a timeout; Resume reruns the same command with ``--resume`` on the
same output folder. Finished rounds can be loaded onto the open images whose file names match
(``source`` "model round K" in the masks' table). The run folder's layout is the engine's
(``engine.selftrain.layout.RunLayout``). Below, the correction loop (``correction_loop``): train the
next round with your corrections, and open the image the student is least sure about.
"""

from __future__ import annotations

import sys
from pathlib import Path

from qtpy.QtCore import QProcess, QTimer, Signal
from qtpy.QtWidgets import (
    QApplication,
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

from engine.selftrain.events import DONE, MESSAGE, PHASE, PROGRESS, ROUND_DONE, STOPPED, parse_line
from engine.selftrain.layout import RunLayout
from engine.selftrain.config import SelfTrainConfig
from engine.solo.config import TrainConfig
from freesolo_napari.sections.collapsible import Section
from freesolo_napari.sections.correction_loop import CorrectionLoop
from freesolo_napari.sections.loss_curve import LossCurve
from freesolo_napari.sections.round_loader import RoundLoader
from freesolo_napari.sections.trainer_process import KILL_AFTER_MS, is_running, launch, stop_process

POLL_MS = 400
LOG_LINES = 200


class TrainingSection(Section):
    """Folder, rounds, iterations, keep threshold, preset, output; Start / Cancel / Resume; live progress.

    ``model`` (the Model section, optional) gives the device and receives the finished run's model;
    ``folder`` (the folder browser, optional) shows loaded rounds and corrections come from it.
    """

    ended = Signal(str)  # the process ended: "finished", "stopped" or "failed"

    def __init__(self, ctx, model=None, folder=None):
        body = QWidget()
        super().__init__("Self-training", body, "Show or hide self-training (Free Mask -> SOLO rounds, "
                         "run in a separate process)")
        self.ctx = ctx
        self.model = model
        self.folder = folder
        self.process: QProcess | None = None
        self.state = "idle"  # idle | running | stopping | stopped | finished | failed
        self.round = self.rounds_total = self.iteration = self.iters_total = 0
        self.events: list[dict] = []
        self._layout: RunLayout | None = None  # the run folder of the process started last
        self._buffer = b""
        self._stderr_tail: list[str] = []
        self._make_fields()
        self._make_run_widgets()
        self._lay_out(body)
        self._connect()
        self._set_running(False)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)

    # ---- building -------------------------------------------------------------------------
    def _make_fields(self) -> None:
        self.images_edit = QLineEdit(placeholderText="folder of training images",
                                     toolTip="Folder of images to self-train on (non-images are skipped)")
        self.images_button = QPushButton("…", toolTip="Choose the folder of training images")
        self.rounds = QSpinBox(minimum=1, maximum=20, value=SelfTrainConfig().rounds, toolTip="SOLO rounds: round 1 trains on Free Mask's "
                               "masks, round K on round K-1's confident predictions")
        self.iters = QSpinBox(minimum=1, maximum=1_000_000, value=TrainConfig().iters, singleStep=50,
                              toolTip="Training iterations per round")
        self.size = QSpinBox(minimum=64, maximum=2048, value=320, singleStep=32,
                             toolTip="Training image size (long side, pixels); smaller trains faster")
        self.keep_thr = QDoubleSpinBox(minimum=0.0, maximum=1.0, singleStep=0.05, value=SelfTrainConfig().keep_thr, decimals=2,
                                       toolTip="Predictions scoring at least this become the next round's masks")
        self.preset = QComboBox(toolTip="SOLO size: cpu-small (grids 24/16/12, 64-d; for CPUs) or paper "
                                "(grids 40/36/24/16/12, 256-d)")
        self.preset.addItems(["cpu-small", "paper"])
        self.out_edit = QLineEdit(placeholderText="run folder (round_0, round_1, …)",
                                  toolTip="Run folder: models, checkpoints, logs and predictions of every round")
        self.out_button = QPushButton("…", toolTip="Choose the run folder")

    def _make_run_widgets(self) -> None:
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
        self.rounds_view = RoundLoader(self.ctx, self.run_folder,  # finished rounds onto the open images
                                       self.folder.set_round if self.folder is not None else None)
        self.loop = CorrectionLoop(self.ctx, self, self.folder)
        self.round_combo, self.load_button = self.rounds_view.combo, self.rounds_view.load_button
        self._poll = QTimer(self, interval=POLL_MS)

    def _lay_out(self, body: QWidget) -> None:
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
        layout.addWidget(self.rounds_view)
        layout.addWidget(self.loop)

    def _connect(self) -> None:
        self._poll.timeout.connect(self.curve.poll)
        self.images_button.clicked.connect(lambda: self._pick_folder(self.images_edit, "Training images"))
        self.out_button.clicked.connect(lambda: self._pick_folder(self.out_edit, "Run folder"))
        self.out_edit.textChanged.connect(lambda _t: self.refresh_rounds())
        self.start_button.clicked.connect(lambda: self.start())
        self.cancel_button.clicked.connect(self.cancel)
        self.resume_button.clicked.connect(lambda: self.start(resume=True))

    # ---- starting -------------------------------------------------------------------------
    def images_folder(self) -> Path:
        """The training images folder of the field (ValueError: none, or not a folder)."""
        images = Path(self.images_edit.text().strip()).expanduser()
        if not self.images_edit.text().strip() or not images.is_dir():
            raise ValueError(f"training images: {images} is not a folder" if self.images_edit.text().strip()
                             else "choose the folder of training images")
        return images

    def command(self, resume: bool = False, rounds: int | None = None, labels: Path | None = None) -> list[str]:
        """The ``engine.cli selftrain`` arguments for the current fields (validated); ``rounds`` (all of
        the run's rounds) and ``labels`` (trusted labels) override the fields for the correction loop.
        Round 0's coarse masks are made with the Free Mask settings on screen (backbone, sliders,
        generators, tiles), as the overlays you tuned show them."""
        images = self.images_folder()
        out_text = self.out_edit.text().strip()
        if not out_text:
            raise ValueError("choose an output (run) folder")
        out = Path(out_text).expanduser()
        run = RunLayout(out)
        if resume and not run.has_run():
            raise ValueError(f"{out} holds no earlier run to resume; press Start")
        if not resume and run.rounds_started():
            raise ValueError(f"{out} already holds a run: press Resume to continue it, or choose another output folder")
        device = self.model.device_name() if self.model is not None else "auto"
        rounds = self.rounds.value() if rounds is None else rounds
        if resume:  # never fewer rounds than the run holds (the correction loop may have added some)
            rounds = max([rounds, *run.rounds_started()])
        args = ["-m", "engine.cli", "selftrain", str(images), "--out", str(out), "--rounds", str(rounds),
                "--iters", str(self.iters.value()), "--size", str(self.size.value()),
                "--keep-thr", f"{self.keep_thr.value():g}", "--preset", self.preset.currentText(),
                "--device", device, "--progress", "json", *self._freemask_args()]
        return args + (["--resume"] if resume else []) + (["--labels", str(labels)] if labels is not None else [])

    def _freemask_args(self) -> list[str]:
        from engine.cli.common import freemask_args

        ctx = self.ctx
        return freemask_args(ctx.feature_config(), ctx.current_params(), ctx.current_generators(), *ctx.current_tiling())

    def start(self, resume: bool = False, rounds: int | None = None, labels: Path | None = None) -> bool:
        """Launch the training process; a bad field is one notification and nothing starts."""
        if self.is_running():
            return False
        try:
            args = self.command(resume, rounds, labels)
        except ValueError as exc:
            self.ctx.notify(f"Self-training: {exc}")
            return False
        self._layout = RunLayout(args[args.index("--out") + 1])
        self.events, self._buffer, self._stderr_tail = [], b"", []
        self.round = self.iteration = 0
        self.rounds_total, self.iters_total = int(args[args.index("--rounds") + 1]), self.iters.value()
        proc = launch(self, args)
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
        return is_running(self.process)

    # ---- stopping -------------------------------------------------------------------------
    def cancel(self) -> None:
        """SIGINT: the trainer ends its iteration and saves a checkpoint; killed after a timeout."""
        if not self.is_running():
            return
        self.state = "stopping"
        self.progress_label.setText("Stopping: the trainer saves a checkpoint…")
        self.cancel_button.setEnabled(False)
        stop_process(self.process, KILL_AFTER_MS, block=False, on_kill=lambda: self.log_view.appendPlainText(
            f"the process did not stop within {KILL_AFTER_MS / 1000:.0f}s: killed"))

    def shutdown(self, wait_ms: int = 10_000) -> None:
        """Stop a running process before the application quits (checkpoint first)."""
        if self.process is not None:
            stop_process(self.process, wait_ms)

    # ---- reading the process ----------------------------------------------------------------
    def _read_stdout(self) -> None:
        self._buffer += bytes(self.process.readAllStandardOutput())
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            event = parse_line(raw)
            if event is not None:
                self._event(event)
                continue
            line = raw.decode("utf-8", "replace").strip()
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
        if "round" in ev:
            self.round = int(ev["round"])
        self.rounds_total = int(ev.get("rounds", self.rounds_total))
        self.HANDLERS[ev["event"]](self, ev)

    def _where(self) -> str:
        return f"round {self.round}/{self.rounds_total}"

    def _on_phase(self, ev: dict) -> None:
        phase = ev.get("phase", "")
        if phase == "train":
            self.iters_total = int(ev.get("iters", self.iters_total))
            self.curve.watch(self._layout.log(self.round))
            self.progress_label.setText(f"{self._where()} · training SOLO")
        else:
            self.progress_label.setText(f"{self._where()} · {'Free Mask' if phase == 'freemask' else 'predicting'}")

    def _on_progress(self, ev: dict) -> None:
        done, total = int(ev["done"]), max(int(ev["total"]), 1)
        self.progress.setMaximum(total)
        self.progress.setValue(done)
        phase = ev.get("phase", "")
        if phase == "train":
            self.iteration, self.iters_total = done, total
            loss = ev.get("loss", {}).get("total")
            self.progress_label.setText(f"{self._where()} · iteration {done}/{total}"
                                        + (f" · loss {loss:.3f}" if loss is not None else ""))
        else:
            what = "Free Mask" if phase == "freemask" else "predicting"
            self.progress_label.setText(f"{self._where()} · {what} image {min(done + 1, total)}/{total}")

    def _on_round_done(self, ev: dict) -> None:
        self.log_view.appendPlainText(f"round {self.round} done: {ev.get('path', '')}")
        self.refresh_rounds()

    def _on_message(self, ev: dict) -> None:
        self.log_view.appendPlainText(str(ev.get("text", "")))

    def _on_stopped(self, ev: dict) -> None:
        self.log_view.appendPlainText(f"stopped in round {self.round} ({ev.get('phase', '')})")

    def _on_done(self, ev: dict) -> None:
        pass  # the process ends next: _finished says so

    # one handler per event of engine.selftrain.events (parse_line passes no other)
    HANDLERS = {PHASE: _on_phase, PROGRESS: _on_progress, ROUND_DONE: _on_round_done, MESSAGE: _on_message,
                STOPPED: _on_stopped, DONE: _on_done}

    def _finished(self, code: int, _status=None) -> None:
        self._poll.stop()
        if self.process is not None:
            self._read_stdout()
        self.curve.poll()
        if code == 0:
            self.state = "finished"
            self.progress_label.setText(f"Finished {self.rounds_total} round(s) in {self._layout.root}")
            self._offer_model()
        elif self.state == "stopping" or code == 130:
            self.state = "stopped"
            self.progress_label.setText(f"Stopped in round {self.round} at iteration {self.iteration}: "
                                        "a checkpoint is saved; press Resume to continue")
        else:
            self.state = "failed"
            why = self._stderr_tail[-1] if self._stderr_tail else f"exit code {code}"
            self.progress_label.setText("Self-training failed (see the log above).")
            self.ctx.notify(f"Self-training failed: {why}")
        self.refresh_rounds()
        self._set_running(False)
        self.ended.emit(self.state)

    def _process_error(self, error) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self.state = "failed"
            self._poll.stop()
            self._set_running(False)
            self.ctx.notify(f"Self-training could not start {sys.executable}: {self.process.errorString()}")
            self.ended.emit(self.state)

    def _offer_model(self) -> None:
        """After a finished run, the last round's model is the one 'Predict with model' uses."""
        last = self._layout.model(self.rounds_total) if self._layout is not None else None
        if self.model is not None and last is not None and last.is_file():
            self.model.set_model_path(last)

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.resume_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.loop.train_button.setEnabled(not running)
        for w in (self.images_edit, self.images_button, self.out_edit, self.out_button, self.rounds, self.iters,
                  self.size, self.keep_thr, self.preset):
            w.setEnabled(not running)

    # ---- finished rounds ------------------------------------------------------------------
    def run_folder(self) -> RunLayout | None:
        text = self.out_edit.text().strip()
        return RunLayout(Path(text).expanduser()) if text else None

    def refresh_rounds(self) -> list[int]:
        return self.rounds_view.refresh()

    def load_round(self, k: int | None = None):
        return self.rounds_view.load(k)

    @property
    def shown_round(self) -> tuple[int, int] | None:
        return self.rounds_view.shown_round

    @staticmethod
    def _pick_folder(edit: QLineEdit, title: str) -> None:
        path = QFileDialog.getExistingDirectory(edit, title, edit.text())
        if path:
            edit.setText(path)


def _row(*widgets, stretch: bool = True) -> QHBoxLayout:
    row = QHBoxLayout()
    for i, w in enumerate(widgets):
        row.addWidget(w, 1 if stretch and i == 0 else 0)
    return row
