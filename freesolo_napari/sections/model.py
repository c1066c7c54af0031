"""The panel's Model section: backbone and weights, device, and a trained SOLO model to predict with.

The backbone and device pick the panel's feature extractor: changing either drops the cached
extractor and features, so the next run uses them. Loading weights or a SOLO model, and
predicting, run in worker threads; a file that cannot be used becomes one notification naming
it, and the previous choice stays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QComboBox, QFormLayout, QHBoxLayout, QLineEdit, QPushButton, QWidget

from freesolo_napari.layers import image_from_layer
from freesolo_napari.sections.collapsible import Section


def leave_a_core_to_the_viewer() -> int:
    """torch in napari's process uses all cores but one, unless OMP_NUM_THREADS is set.

    Backbone passes and post-processing run in worker threads while the viewer renders; with
    every core busy in torch's thread pool, the two fight and both slow down (measured in
    benchmarks/panel_responsiveness.py). Returns the thread count in effect.
    """
    from engine.runtime.device import configure_cpu_threads

    return configure_cpu_threads(spare=1)


def backbone_choices() -> list[str]:
    """The embedded default first, then the engine registry's other names."""
    from engine.backbones.registry import DEFAULT_BACKBONE, registered_backbones

    return [DEFAULT_BACKBONE] + [n for n in registered_backbones() if n != DEFAULT_BACKBONE]


class ModelControls(Section):
    """Backbone (+ load weights…), device, SOLO model (+ Predict with model)."""

    def __init__(self, ctx):
        from engine.runtime.device import available_devices

        body = QWidget()
        super().__init__("Model", body, "Show or hide the backbone, device and trained-model settings")
        self.ctx = ctx
        self.threads = leave_a_core_to_the_viewer()
        self.backbone = QComboBox(toolTip="Feature backbone for Free Mask (efficientnet-lite0 is embedded; others need "
                                  "their weights package, or load a checkpoint file)")
        self.backbone.addItems(backbone_choices())
        self.backbone.setProperty("persist_add", True)  # a restored checkpoint path is added back
        self.weights_button = QPushButton("load weights…", toolTip="Use a local backbone checkpoint (.pth/.pt: "
                                          "EfficientNet-Lite or ResNet, e.g. DenseCL/MoCo); nothing is downloaded")
        self.device = QComboBox(toolTip="Where the networks run: auto picks CUDA, then Apple MPS, then the CPU "
                                "(only devices this machine has are listed)")
        self.device.addItems(available_devices())
        self.model_path = QLineEdit(placeholderText="RUN_DIR/round_K/model.pt",
                                    toolTip="A trained SOLO model (model.pt from freesolo train / selftrain)")
        self.model_button = QPushButton("…", toolTip="Choose a trained SOLO model.pt")
        self.predict_button = QPushButton("Predict with model",
                                          toolTip="Run the SOLO model on the selected image (worker thread) and show its masks")
        self._spec = self.spec()
        self._prebuilt = None  # (spec, extractor) built while checking a weights file
        self._solo = None  # ((path, mtime, device), model, size, inference)
        self._workers: list = []

        self.backbone.currentTextChanged.connect(self._changed)
        self.device.currentTextChanged.connect(self._changed)
        self.weights_button.clicked.connect(self._ask_weights)
        self.model_button.clicked.connect(self._ask_model)
        self.predict_button.clicked.connect(self.predict_current)
        form = QFormLayout(body)
        form.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(self.backbone, 1)
        row.addWidget(self.weights_button)
        form.addRow("backbone", row)
        form.addRow("device", self.device)
        row = QHBoxLayout()
        row.addWidget(self.model_path, 1)
        row.addWidget(self.model_button)
        form.addRow("SOLO model", row)
        form.addRow(self.predict_button)

    # ---- backbone and device --------------------------------------------------------------
    def spec(self) -> tuple[str, str]:
        return self.backbone.currentText(), self.device.currentText()

    def device_name(self) -> str:
        return self.device.currentText() or "auto"

    def feature_config(self):
        from engine.freemask.features import FeatureConfig

        return FeatureConfig(backbone=self._spec[0])

    def extractor_factory(self):
        """() -> a FeatureExtractor for the backbone and device chosen now: made here (GUI thread),
        called by a worker (building loads weights)."""
        spec, prebuilt = self._spec, self._prebuilt
        return lambda: build_extractor(spec, prebuilt)

    def _changed(self, *_args) -> None:
        spec = self.spec()
        if spec == self._spec:
            return
        self._spec = spec
        self._solo = None  # the SOLO model is reloaded on the new device
        self.ctx.state.reset_model()  # the next run builds the chosen backbone on the chosen device
        self.ctx.set_status(f"backbone {spec[0]} on {spec[1]}: the next run recomputes features")

    def _ask_weights(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self, "Backbone weights", "", "Checkpoints (*.pth *.pt *.tar *.ckpt *.bin);;All files (*)")
        if path:
            self.load_weights(path)

    def load_weights(self, path: str):
        """Check a checkpoint by building the extractor from it (worker); select it if it works."""
        from freesolo_napari.workers import create_worker

        from engine.freemask.features import FeatureConfig, FeatureExtractor

        spec = (str(path), self.device_name())
        self.weights_button.setEnabled(False)
        self.ctx.set_status(f"Loading backbone weights {Path(path).name}…")
        worker = create_worker(self, lambda: FeatureExtractor(FeatureConfig(backbone=spec[0]), device=spec[1]),
                               _ignore_errors=True)
        worker.returned.connect(lambda ex: self._weights_ok(spec, ex))
        worker.errored.connect(lambda exc: self.ctx.notify(f"Cannot use backbone weights {path}: {exc}"))
        worker.finished.connect(lambda: self.weights_button.setEnabled(True))
        return self._start(worker)

    def _weights_ok(self, spec: tuple[str, str], extractor) -> None:
        self._prebuilt = (spec, extractor)
        if self.backbone.findText(spec[0]) < 0:
            self.backbone.addItem(spec[0])
        self.backbone.setCurrentText(spec[0])
        self.ctx.set_status(f"Backbone {Path(spec[0]).name} loaded ({extractor.backbone.__class__.__name__})")

    # ---- SOLO model -----------------------------------------------------------------------
    def _ask_model(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self, "SOLO model", self.model_path.text(), "SOLO model (*.pt);;All files (*)")
        if path:
            self.model_path.setText(path)

    def set_model_path(self, path: str | Path) -> None:
        """The SOLO model 'Predict with model' uses (e.g. a finished self-training run's last round)."""
        self.model_path.setText(str(path))

    def predict_current(self):
        """Run the SOLO model on the selected image layer in a worker; returns the worker (or None)."""
        from freesolo_napari.workers import create_worker

        ctx = self.ctx
        name = ctx.current_image()
        path = self.model_path.text().strip()
        if not path:
            ctx.notify("Choose a trained SOLO model (model.pt) first.")
            return None
        if not name:
            ctx.notify("No image layer to predict on: open an image first.")
            return None
        try:
            image = image_from_layer(ctx.viewer.layers[name])
        except ValueError as exc:
            ctx.notify(str(exc))
            return None
        self.predict_button.setEnabled(False)
        ctx.set_status(f"Predicting '{name}' with {Path(path).name}…")
        worker = create_worker(self, predict, name, image, path, self.device_name(), self._solo, _ignore_errors=True)
        worker.returned.connect(self._show_prediction)
        worker.errored.connect(lambda exc: ctx.notify(f"Prediction with {path} failed: {exc}"))
        worker.finished.connect(lambda: self.predict_button.setEnabled(True))
        return self._start(worker)

    def _show_prediction(self, payload) -> None:
        name, instances, model_name, solo = payload
        self._solo = solo  # the loaded model is kept for the next prediction (stored here, on the GUI thread)
        if self.ctx.show_instances(name, instances):
            self.ctx.set_status(f"{len(instances)} masks on '{name}' from {model_name}")

    def _start(self, worker):
        self._workers.append(worker)
        worker.finished.connect(lambda: self._workers.remove(worker) if worker in self._workers else None)
        worker.start()
        return worker


def build_extractor(spec: tuple[str, str], prebuilt=None):
    """A FeatureExtractor for ``spec`` (backbone, device); ``prebuilt`` (spec, extractor) is reused if it matches.
    Call from a worker thread."""
    from engine.freemask.features import FeatureConfig, FeatureExtractor

    import pandas  # noqa: F401 napari's Labels features import it on first use: here, off the GUI thread

    if prebuilt is not None and prebuilt[0] == spec:
        return prebuilt[1]
    return FeatureExtractor(FeatureConfig(backbone=spec[0]), device=spec[1])


def predict(name: str, image: np.ndarray, path: str, device: str, solo=None):
    """Worker body: the SOLO model's instances on ``image``, and the (key, model, size, inference, scale) it used.

    ``solo`` is the model loaded by an earlier prediction: reused while the file and device are the same.
    """
    from engine.solo.predict import inference_settings, predict_image
    from engine.solo.checkpoint import load_model

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    key = (str(p.resolve()), p.stat().st_mtime, device)
    if solo is None or solo[0] != key:
        model, state = load_model(p, device)
        solo = (key, model, *inference_settings(model, state))
    _key, model, size, inference, scale = solo
    instances = predict_image(model, image, size, inference, scale=scale)
    for inst in instances:
        inst.source = "model"
    return name, instances, p.name, solo
