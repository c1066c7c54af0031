"""The Free Mask parameter controls: Qt widgets in, ``FreeMaskParams`` and ``GeneratorConfig`` out.

Kept apart from the panel so the panel only wires work and results; every control here emits
``changed`` and the panel re-runs the post-processing on cached features. The generator toggles
(Free Mask, MaskCut, classical; at least one stays on) choose whose masks the engine merges into
one ranking (``engine/generators/merge.py``); turning one on computes its masks in the same
worker (MaskCut from the cached features, classical proposals from the image), once per image.
The classical row chooses the classical methods ('auto': by image kind, as ``--classical``) and
Free Mask's merge weight beside them on microscopy (``--freemask-weight``); both are
post-processing too.
"""

from __future__ import annotations

from dataclasses import replace

from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QSlider,
    QSpinBox,
    QWidget,
)

from engine.freemask.postprocess import FreeMaskParams, parse_scales
from engine.generators.merge import (
    CLASSICAL,
    COLOUR_CLASSICAL,
    GENERATORS,
    MICROSCOPY_CLASSICAL,
    GeneratorConfig,
    parse_classical,
)

COMMON_SCALES = (1.0, 0.5, 0.25, 0.125)
GENERATOR_TEXT = {
    "freemask": ("Free Mask", "Free Mask's query masks (the paper's coarse masks)"),
    "maskcut": ("MaskCut", "Normalised cuts on the same features (CutLER's MaskCut), several masks per image"),
    "classical": ("classical", "Threshold + watershed and graph-based regions of the image itself"),
    "grouping": ("grouping", "Felzenszwalb regions merged step by step by their features (selective-search "
                 "style): masks at every scale, for colour photos"),
}


def classical_choices() -> list[str]:
    """The classical-methods choices: 'auto' (by image kind), the two kinds' defaults, each method alone, all."""
    kinds = [", ".join(MICROSCOPY_CLASSICAL), ", ".join(COLOUR_CLASSICAL)]
    return ["auto", *kinds, *CLASSICAL, ", ".join(CLASSICAL)]


class _Slider(QWidget):
    """A 0.01-step slider with its value shown beside it."""

    def __init__(self, value: float, lo: float, hi: float, tip: str):
        super().__init__(toolTip=tip)
        self.slider = QSlider(Qt.Orientation.Horizontal, minimum=round(lo * 100), maximum=round(hi * 100),
                              value=round(value * 100), toolTip=tip)
        self.label = QLabel(f"{value:.2f}")
        self.slider.valueChanged.connect(lambda v: self.label.setText(f"{v / 100:.2f}"))
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.slider)
        row.addWidget(self.label)

    def value(self) -> float:
        return self.slider.value() / 100.0


class FreeMaskControls(QWidget):
    """Every Free Mask knob, with a tooltip each; ``params()`` validates and returns them."""

    changed = Signal()

    def __init__(self, params: FreeMaskParams | None = None):
        super().__init__()
        p = params or FreeMaskParams()
        self._base = p
        self.tau = _Slider(p.tau, 0.05, 0.95, "Soft-mask threshold τ: higher gives tighter, fewer masks")
        self.min_score = _Slider(p.min_score, 0.0, 0.95, "Hide masks whose decayed maskness is below this")
        self.scale_checks = [QCheckBox(f"{s:g}", checked=s in p.scales, toolTip="Query pyramid scale")
                             for s in COMMON_SCALES]
        self.scales_edit = QLineEdit(", ".join(f"{s:g}" for s in p.scales),
                                     toolTip="Pyramid scales as a list (edit for other values, e.g. 0.75)")
        self.top_k = QSpinBox(minimum=0, maximum=500, value=p.top_k or 0, specialValueText="auto",
                              toolTip="Masks kept per image (auto: 20, or 100 for upscaled small objects)")
        self.min_area = QSpinBox(minimum=0, maximum=1_000_000, value=p.min_area, toolTip="Smallest mask kept, in pixels")
        self.nms_kernel = QComboBox(toolTip="Matrix NMS decay: gaussian (σ below) or linear")
        self.nms_kernel.addItems(["gaussian", "linear"])
        self.nms_kernel.setCurrentText(p.nms_kernel)
        self.nms_sigma = QDoubleSpinBox(minimum=0.1, maximum=20.0, singleStep=0.5, value=p.nms_sigma,
                                        toolTip="Gaussian Matrix NMS σ: higher suppresses overlaps harder")
        self.split = QCheckBox("one instance per part", checked=p.split_components,
                               toolTip="Split each mask into its connected parts (a query often lights up several objects)")
        self.refine = QCheckBox("refine boundaries", checked=p.refine, toolTip="Image-guided filter on mask edges")
        self.radius = QSpinBox(minimum=0, maximum=64, value=p.refine_radius or 0, specialValueText="auto",
                               toolTip="Refinement radius in image pixels (auto: 12 / input scale)")
        generators_row, classical_row = self._generator_rows()

        scales_row = QHBoxLayout()
        for box in self.scale_checks:
            scales_row.addWidget(box)
            box.toggled.connect(self._checks_to_text)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("generators", generators_row)
        form.addRow("classical", classical_row)
        form.addRow("τ", self.tau)
        form.addRow("pyramid scales", scales_row)
        form.addRow("", self.scales_edit)
        form.addRow("min score", self.min_score)
        form.addRow("top-k", self.top_k)
        form.addRow("min area (px)", self.min_area)
        form.addRow("NMS kernel", self.nms_kernel)
        form.addRow("NMS σ", self.nms_sigma)
        form.addRow("refine radius", self.radius)
        form.addRow(self.split)
        form.addRow(self.refine)

        for signal in (self.tau.slider.valueChanged, self.min_score.slider.valueChanged, self.top_k.valueChanged,
                       self.min_area.valueChanged, self.nms_kernel.currentTextChanged, self.nms_sigma.valueChanged,
                       self.radius.valueChanged, self.split.toggled, self.refine.toggled,
                       self.scales_edit.editingFinished):
            signal.connect(lambda *_: self.changed.emit())

    def _generator_rows(self) -> tuple[QHBoxLayout, QHBoxLayout]:
        """The generator toggles, the classical methods and Free Mask's merge weight, in two rows."""
        self.generator_checks = [
            QCheckBox(GENERATOR_TEXT[g][0], checked=g == "freemask",
                      toolTip=GENERATOR_TEXT[g][1] + "; the chosen generators' masks are ranked together "
                      "(one score, one Matrix NMS). At least one stays on")
            for g in GENERATORS]
        self.generator_checks[0].setEnabled(False)  # the only one on
        defaults = GeneratorConfig()
        self.on_microscopy = QCheckBox(
            "+ classical on microscopy", checked=defaults.classical_on_microscopy,
            toolTip="On grey-level, one-dye and stained (H&E) images the classical proposals join the chosen "
            "generators (the line under Run says when they did)")
        self.classical_methods = QComboBox(
            toolTip="Which classical methods make the classical proposals (as --classical): auto chooses by image "
            "kind — watershed and local_watershed on microscopy, watershed and felzenszwalb on other images (the "
            "line under Run says which ran)")
        self.classical_methods.addItems(classical_choices())
        self.freemask_weight = QDoubleSpinBox(
            minimum=0.05, maximum=1.0, singleStep=0.05, decimals=2, value=defaults.freemask_weight,
            toolTip="On microscopy, Free Mask's merge scores are multiplied by this where classical proposals are in "
            "the merge (as --freemask-weight; 1 = no down-weighting)")

        generators_row = QHBoxLayout()
        for box in self.generator_checks:
            generators_row.addWidget(box)
            box.toggled.connect(self._generator_toggled)
        generators_row.addWidget(self.on_microscopy)
        classical_row = QHBoxLayout()
        classical_row.addWidget(self.classical_methods, 1)
        classical_row.addWidget(QLabel("Free Mask weight"))
        classical_row.addWidget(self.freemask_weight)
        for signal in (self.on_microscopy.toggled, self.classical_methods.currentTextChanged,
                       self.freemask_weight.valueChanged):
            signal.connect(lambda *_: self.changed.emit())
        return generators_row, classical_row

    def _generator_toggled(self, *_args) -> None:
        """The last generator on cannot be turned off (its box is disabled); none on (only set from
        code, e.g. restored settings mid-way) turns Free Mask back on after the event."""
        checked = [box for box in self.generator_checks if box.isChecked()]
        for box in self.generator_checks:
            box.setEnabled(not (len(checked) == 1 and box.isChecked()))
        if not checked:
            QTimer.singleShot(0, self._keep_one)
        self.changed.emit()

    def _keep_one(self) -> None:
        if not any(box.isChecked() for box in self.generator_checks):
            self.generator_checks[0].setChecked(True)

    def generators(self) -> GeneratorConfig:
        """The chosen generators; raises ValueError when none is on."""
        chosen = tuple(g for g, box in zip(GENERATORS, self.generator_checks) if box.isChecked())
        if not chosen:
            raise ValueError("choose at least one generator (Free Mask, MaskCut or classical)")
        return GeneratorConfig(generators=chosen, classical_on_microscopy=self.on_microscopy.isChecked(),
                               classical=parse_classical(self.classical_methods.currentText()),
                               freemask_weight=self.freemask_weight.value()).validated()

    def _checks_to_text(self, *_args) -> None:
        chosen = [s for s, box in zip(COMMON_SCALES, self.scale_checks) if box.isChecked()]
        extra = [s for s in self._edited_scales() if s not in COMMON_SCALES]
        self.scales_edit.setText(", ".join(f"{s:g}" for s in sorted(set(chosen + extra), reverse=True)))
        self.changed.emit()

    def _edited_scales(self) -> list[float]:
        try:
            return list(parse_scales(self.scales_edit.text()))
        except ValueError:
            return []

    def params(self) -> FreeMaskParams:
        """The current settings; raises ValueError naming the bad field."""
        return replace(
            self._base,
            tau=self.tau.value(),
            min_score=self.min_score.value(),
            scales=parse_scales(self.scales_edit.text()),
            top_k=self.top_k.value() or None,
            min_area=self.min_area.value(),
            nms_kernel=self.nms_kernel.currentText(),
            nms_sigma=self.nms_sigma.value(),
            split_components=self.split.isChecked(),
            refine=self.refine.isChecked(),
            refine_radius=self.radius.value() or None,
        ).validated()
