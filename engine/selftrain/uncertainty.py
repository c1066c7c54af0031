"""Which image to correct next: the ones the student is least sure about.

For each image the student predicts on the image and on its horizontal flip (flipped back).
A confident student finds the same objects both times. The image's uncertainty is

    1 - sum_i s_i * IoU_i / sum_i s_i

over the masks of both passes, where s_i is a mask's score and IoU_i its best IoU with a mask of
the other pass: score-weighted disagreement, 0 when the two passes agree exactly, 1 when nothing
matches. An image with no masks in either pass gets 1 (the student sees nothing there, so a
correction teaches the most). Images are ranked most uncertain first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from engine.ops.masks import crop_iou_matrix
from engine.runtime.batch import BatchReport, iter_batch
from engine.solo.checkpoint import load_model
from engine.solo.predict import inference_settings, predict_image
from engine.structures import InstanceMask


@dataclass(frozen=True)
class Uncertainty:
    file_name: str
    uncertainty: float
    masks: int  # masks of the unflipped pass
    mean_score: float


def _mirrored(m: InstanceMask) -> InstanceMask:
    """``m`` flipped left-right in its image (the crop mirrored, the box moved)."""
    y0, y1, x0, x1 = m.box
    w = m.shape[1]
    return replace(m, crop=np.ascontiguousarray(m.crop[:, ::-1]), box=(y0, y1, w - x1, w - x0))


def flip_disagreement(plain: list[InstanceMask], flipped_back: list[InstanceMask]) -> float:
    """The formula of the module docstring for one image's two passes."""
    both = plain + flipped_back
    if not both:
        return 1.0
    iou = crop_iou_matrix([m.crop for m in both], [m.box for m in both]).numpy()
    n = len(plain)
    best = np.zeros(len(both))
    if n and len(flipped_back):
        best[:n] = iou[:n, n:].max(axis=1)
        best[n:] = iou[n:, :n].max(axis=1)
    scores = np.array([max(m.score, 1e-6) for m in both])
    return float(1.0 - (scores * best).sum() / scores.sum())


def rank_uncertain(inputs: Sequence[str | Path], model_path: str | Path, *, device: str = "cpu",
                   progress: Callable[[int, int, str], None] | None = None) -> list[Uncertainty]:
    """Every image of ``inputs`` with the student's uncertainty, most uncertain first."""
    model, state = load_model(model_path, device)
    size, inference, scale = inference_settings(model, state)
    report = BatchReport()
    rows = []
    for name, _path, image in iter_batch(inputs, report, progress):
        plain = predict_image(model, image, size, inference, scale=scale)
        mirrored = predict_image(model, np.ascontiguousarray(image[:, ::-1]), size, inference, scale=scale)
        back = [_mirrored(m) for m in mirrored]
        scores = [m.score for m in plain]
        rows.append(Uncertainty(name, round(flip_disagreement(plain, back), 4), len(plain),
                                round(float(np.mean(scores)) if scores else 0.0, 4)))
    return sorted(rows, key=lambda r: (-r.uncertainty, r.file_name))
