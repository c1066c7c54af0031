"""Running a trained SOLO student over images (``freesolo predict``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from engine.runtime.batch import BatchReport, iter_batch
from engine.solo.amp import Precision, resolve_precision, to_float
from engine.geometry import letterbox
from engine.solo import tiles
from engine.solo.postprocess import predict_instances
from engine.solo.checkpoint import load_model
from engine.structures import ImageResult


def inference_settings(model, state: dict, score_thr: float | None = None,
                       max_per_image: int | None = None) -> tuple[int, object, float]:
    """(training image size, inference config, scale) of a loaded model, with optional overrides;
    ``scale`` is the network px per image px it learnt at (0: whole images, ``engine/solo/tiles.py``)."""
    train_config = state.get("train_config", {})
    size = int(train_config.get("size", 320))
    inference = model.cfg.inference
    if score_thr is not None:
        inference = replace(inference, score_thr=score_thr)
    if max_per_image is not None:
        inference = replace(inference, max_per_image=max_per_image)
    return size, inference, float(train_config.get("scale", 0.0))


def predict_image(model, image, size: int, inference, precision: Precision | None = None,
                  scale: float = 0.0) -> list:
    """Instances of one RGB uint8 (H, W, 3) image from a loaded model (see ``inference_settings``):
    the image letterboxed whole, or, when it is larger than ``size`` at ``scale``, in windows whose
    masks are merged (``engine/solo/tiles.py``; ``inference.max_per_image`` per window).

    ``precision``: autocast for the network only (e.g. float16 on CUDA); post-processing is float32.
    """
    plan = tiles.windows(image.shape[:2], scale, size)
    if plan is None:
        return _predict_input(model, image, size, None, inference, precision)
    found = [_predict_input(model, np.ascontiguousarray(image[y0:y1, x0:x1]), size, scale, inference, precision)
             for y0, y1, x0, x1 in plan.windows]
    return tiles.merge_windows(found, plan, image.shape[:2], inference)


def _predict_input(model, image, size: int, scale: float | None, inference, precision: Precision | None) -> list:
    square, _scale, content = letterbox(image, size, scale)
    x = model.backbone.preprocess(square.permute(1, 2, 0).numpy())
    with torch.inference_mode():
        if precision is not None and precision.enabled:
            with precision.autocast():
                outputs = model(x)
            outputs = to_float(outputs)
        else:
            outputs = model(x)
    return predict_instances(outputs, 0, image.shape[:2], content, inference)


def predict_folder(
    inputs: Sequence[str | Path],
    model_path: str | Path,
    *,
    score_thr: float | None = None,
    max_per_image: int | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    amp: bool = True,
    shard: tuple[int, int] | None = None,
    channel: int | None = None,
    on_result: Callable[[ImageResult, np.ndarray], None] | None = None,
) -> BatchReport:
    """Predict instances for every image (every plane of a stack) of ``inputs``; bad files are reported, not fatal.

    ``amp``: float16 autocast on CUDA (ignored elsewhere). ``shard = (rank, world)``: only that
    share of the images (``engine.runtime.sharding`` runs the shares in parallel and merges them).
    ``on_result``: each image's result goes there as it finishes instead of into ``report.results``.
    """
    model, state = load_model(model_path, device)
    size, inference, scale = inference_settings(model, state, score_thr, max_per_image)
    precision, _note = resolve_precision(model.backbone.device, amp)
    report = BatchReport()
    for name, path, image in iter_batch(inputs, report, progress, should_stop, shard, channel):
        instances = predict_image(model, image, size, inference, precision, scale)
        result = ImageResult(name, image.shape[0], image.shape[1], instances)
        if on_result is None:
            report.results.append(result)
        else:
            on_result(result, image)
        report.images[name] = path
    return report
