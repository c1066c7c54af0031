"""Running a trained SOLO student over images (``freesolo predict``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from engine.images import ImageLoadError, list_images, load_image, relative_name
from engine.pipeline import BatchReport, input_root
from engine.solo.data import letterbox
from engine.solo.postprocess import predict_instances
from engine.solo.train import load_model
from engine.structures import ImageResult


def predict_folder(
    inputs: Sequence[str | Path],
    model_path: str | Path,
    *,
    score_thr: float | None = None,
    max_per_image: int | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> BatchReport:
    """Predict instances for every image of ``inputs``; bad files are reported, not fatal."""
    model, state = load_model(model_path, device)
    size = int(state.get("train_config", {}).get("size", 320))
    inference = model.cfg.inference
    if score_thr is not None:
        inference = replace(inference, score_thr=score_thr)
    if max_per_image is not None:
        inference = replace(inference, max_per_image=max_per_image)
    paths, skipped = list_images(inputs)
    root = input_root(inputs)
    report = BatchReport(skipped=[(str(p), why) for p, why in skipped])
    for i, path in enumerate(paths):
        if should_stop is not None and should_stop():
            report.cancelled = True
            break
        name = relative_name(path, root if root is not None else path.parent)
        if progress is not None:
            progress(i, len(paths), name)
        try:
            image = load_image(path)
        except ImageLoadError as exc:
            report.failures.append((str(path), str(exc)))
            continue
        square, _scale, content = letterbox(image, size)
        x = model.backbone.preprocess(square.permute(1, 2, 0).numpy())
        with torch.inference_mode():
            outputs = model(x)
        instances = predict_instances(outputs, 0, image.shape[:2], content, inference)
        report.results.append(ImageResult(name, image.shape[0], image.shape[1], instances))
        report.images[name] = path
    if progress is not None and not report.cancelled:
        progress(len(paths), len(paths), "")
    return report
