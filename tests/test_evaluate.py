"""Class-agnostic COCO mask evaluation."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from engine.io.coco import CocoFormatError, build_coco_dataset, build_results, write_coco
from engine.eval.coco_eval import evaluate_segm
from engine.structures import ImageResult, InstanceMask

H, W = 64, 64


def _square(y: int, x: int, size: int = 20) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y : y + size, x : x + size] = True
    return m


def _gt_results() -> list[ImageResult]:
    return [
        ImageResult("one.png", H, W, [InstanceMask(_square(2, 2), 1.0),
                                      InstanceMask(_square(35, 35), 1.0)]),
        ImageResult("two.png", H, W, [InstanceMask(_square(10, 30), 1.0)]),
    ]


def _gt_dataset(segmentation: str = "rle") -> dict:
    return build_coco_dataset(_gt_results(), segmentation=segmentation)


def _with_scores(results: list[ImageResult]) -> list[ImageResult]:
    out = copy.deepcopy(results)
    for res in out:
        for k, inst in enumerate(res.instances):
            inst.score = 0.9 - 0.1 * k
    return out


@pytest.mark.parametrize("segmentation", ["rle", "polygon"])
def test_perfect_predictions(segmentation: str) -> None:
    gt = _gt_dataset(segmentation)
    pred = build_coco_dataset(_with_scores(_gt_results()))
    m = evaluate_segm(gt, pred)
    for key in ("AP", "AP50", "AP75", "AR100"):
        assert m[key] == pytest.approx(1.0), key
    assert (m["n_images"], m["n_gt"], m["n_pred"], m["n_unmatched"]) == (2, 3, 3, 0)


def test_empty_predictions_score_zero() -> None:
    gt = _gt_dataset()
    empty = [ImageResult(r.file_name, H, W) for r in _gt_results()]
    m = evaluate_segm(gt, build_coco_dataset(empty))
    assert {k: m[k] for k in ("AP", "AP50", "AP75", "AR100")} == {
        "AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AR100": 0.0,
    }
    assert m["n_pred"] == 0
    assert evaluate_segm(gt, [])["AP"] == 0.0


def test_shift_lowers_ap75_but_keeps_ap50() -> None:
    shifted = _with_scores(_gt_results())
    for res in shifted:  # IoU = 17/23 ~ 0.74
        res.instances = [InstanceMask(np.roll(inst.mask, 3, axis=1), inst.score) for inst in res.instances]
    m = evaluate_segm(_gt_dataset(), build_coco_dataset(shifted))
    assert m["AP50"] == pytest.approx(1.0)
    assert m["AP75"] == pytest.approx(0.0)
    assert 0.0 < m["AP"] < 1.0


def test_half_found_gives_partial_recall() -> None:
    preds = _with_scores(_gt_results())
    preds[0].instances = preds[0].instances[:1]  # miss one of the three objects
    m = evaluate_segm(_gt_dataset(), build_coco_dataset(preds))
    assert m["AR100"] == pytest.approx(2 / 3, abs=1e-6)
    assert m["AP"] < 1.0


def test_pred_matched_by_file_name(tmp_path: Path) -> None:
    preds = _with_scores(_gt_results())
    # different order (so different ids) and an extra image that GT does not have
    extra = ImageResult("extra.png", H, W, [InstanceMask(_square(0, 0), 0.99)])
    pred = build_coco_dataset([extra, preds[1], preds[0]])
    gt_path = write_coco(tmp_path / "gt.json", _gt_dataset())
    pred_path = write_coco(tmp_path / "pred.json", pred)
    m = evaluate_segm(gt_path, pred_path)
    assert m["AP"] == pytest.approx(1.0)
    assert m["n_unmatched"] == 1 and m["n_pred"] == 3


def test_result_list_matched_by_image_id() -> None:
    gt = _gt_dataset()
    ids = {img["file_name"]: img["id"] for img in gt["images"]}
    res = build_results(_with_scores(_gt_results()), ids)
    assert evaluate_segm(gt, res)["AP"] == pytest.approx(1.0)
    # the same list with wrong ids does not match anything
    wrong = [{**r, "image_id": r["image_id"] + 100} for r in res]
    m = evaluate_segm(gt, wrong)
    assert m["AP"] == 0.0 and m["n_unmatched"] == 2 and m["n_pred"] == 0


def test_false_positives_lower_ap() -> None:
    preds = _with_scores(_gt_results())
    # a confident false positive on each image
    for res in preds:
        res.instances.insert(0, InstanceMask(_square(44, 0), 0.99))
    m = evaluate_segm(_gt_dataset(), build_coco_dataset(preds))
    assert m["AR100"] == pytest.approx(1.0)
    assert m["AP50"] < 0.9


def test_no_gt_objects_keeps_minus_one() -> None:
    gt = build_coco_dataset([ImageResult("one.png", H, W)])
    pred = build_coco_dataset(_with_scores(_gt_results())[:1])
    m = evaluate_segm(gt, pred)
    assert m["n_gt"] == 0 and m["AP"] == -1.0


def test_bad_json_gives_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "pred.json"
    bad.write_text("[{]")
    with pytest.raises(CocoFormatError, match="pred.json.*not valid JSON"):
        evaluate_segm(_gt_dataset(), bad)
    res_path = tmp_path / "res.json"
    res_path.write_text(json.dumps([]))
    with pytest.raises(CocoFormatError, match="ground truth"):
        evaluate_segm(res_path, _gt_dataset())
