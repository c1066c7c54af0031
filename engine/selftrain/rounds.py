"""Self-training rounds (``freesolo selftrain``): Free Mask -> SOLO -> SOLO on its own predictions.

RUN_DIR/round_0/  Free Mask's coarse masks (coarse.json)
RUN_DIR/round_1/  SOLO trained on them (model.pt, predictions.json)
RUN_DIR/round_K/  for K >= 2, a SOLO retrained (from the pretrained backbone) on round K-1's
                  selected predictions (score >= keep_thr, at most max_keep plausible ones per image)

Every round is skipped when its outputs exist, and a round's training resumes from its last
checkpoint, so an interrupted run continues where it stopped. ``should_stop`` ends a run
cleanly (the current round's training saves its checkpoint first) by raising
``SelfTrainStopped``; ``events`` receives a dict at each phase change and finished round, for
front ends that show progress (the napari panel reads them as JSON lines).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from engine.io.atomic import atomic_write_json
from engine.io.coco import build_coco_dataset, load_image_results, write_coco
from engine.eval.coco_eval import evaluate_segm
from engine.freemask.pipeline import run_freemask_batch
from engine.solo.config import SoloConfig
from engine.solo.predict import predict_folder
from engine.selftrain.pseudo import SelectionConfig, select_pseudo_labels
from engine.solo.checkpoint import FINAL
from engine.solo.config import TrainConfig
from engine.solo.train import train
from engine.structures import ImageResult

Say = Callable[[str], None]
Events = Callable[[dict], None]


class SelfTrainStopped(Exception):
    """A stop request ended the run; rerunning the same command continues it."""


@dataclass
class RoundSummary:
    round: int
    what: str
    images: int
    masks: int
    seconds: float = 0.0
    metrics: dict = field(default_factory=dict)


def keep_predictions(path: Path, keep_thr: float, max_keep: int,
                     ignore_min_score: float = float("inf")) -> list[ImageResult]:
    """A round's predictions as the next round's training masks.

    Per image the ``max_keep`` best-scored plausible masks with score >= ``keep_thr`` are
    positives; unselected ones scoring at least ``ignore_min_score`` become ignore regions and
    the rest background (see ``engine/solo/pseudo.py``). Measured: ignore regions here (or the
    official positive-only focal loss) let the category branch fire everywhere and cost AP50;
    plain background for everything unselected made round 2 better than round 1.
    """
    results = list(load_image_results(path).values())
    return select_pseudo_labels(results, SelectionConfig(top=max_keep, min_score=keep_thr,
                                                         ignore_min_score=ignore_min_score))


def selftrain(
    images: Path,
    out: Path,
    *,
    rounds: int = 2,
    train_cfg: TrainConfig | None = None,
    model_cfg: SoloConfig | None = None,
    keep_thr: float = 0.3,
    max_keep: int = 20,
    coarse_top: int = 8,
    positive_only: bool = False,
    ignore_min_score: float = float("inf"),
    device: str = "cpu",
    eval_images: Path | None = None,
    gt: Path | None = None,
    say: Say = print,
    progress=None,
    should_stop: Callable[[], bool] | None = None,
    events: Events | None = None,
) -> list[RoundSummary]:

    def emit(event: str, k: int, **info) -> None:
        if events is not None:
            events({"event": event, "round": k, "rounds": rounds, **info})

    def stopped(k: int, where: str) -> SelfTrainStopped:
        emit("stopped", k, phase=where)
        return SelfTrainStopped(f"stopped during round {k} ({where}); run the same command again to continue")

    cfg = train_cfg or TrainConfig()
    out.mkdir(parents=True, exist_ok=True)
    summaries: list[RoundSummary] = []
    r0 = out / "round_0" / "coarse.json"
    if not r0.exists():
        t0 = time.perf_counter()
        say("round 0: Free Mask coarse masks")
        emit("phase", 0, phase="freemask")
        report = run_freemask_batch([images], device=device, progress=progress, should_stop=should_stop)
        if report.cancelled:
            raise stopped(0, "freemask")
        write_coco(r0, build_coco_dataset(report.results))
        (out / "round_0" / "seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}")
    summaries.append(_summary(0, "Free Mask", r0, out / "round_0", eval_images, gt, device))
    emit("round_done", 0, path=str(r0))
    masks = r0
    for k in range(1, rounds + 1):
        rdir = out / f"round_{k}"
        pred = rdir / "predictions.json"
        if k == 1 and coarse_top > 0:
            masks = rdir / "train_masks.json"
            if not masks.exists():
                coarse = list(load_image_results(r0).values())
                write_coco(masks, build_coco_dataset(select_pseudo_labels(coarse, SelectionConfig(top=coarse_top))))
        if k >= 2:
            masks = rdir / "train_masks.json"
            if not masks.exists():
                write_coco(masks, build_coco_dataset(keep_predictions(out / f"round_{k - 1}" / "predictions.json",
                                                                      keep_thr, max_keep, ignore_min_score)))
        if not pred.exists():
            t0 = time.perf_counter()
            say(f"round {k}: training SOLO on {masks.relative_to(out)}")
            emit("phase", k, phase="train", iters=cfg.iters)
            round_cfg = replace(cfg, positive_only_focal=positive_only and k >= 2)
            result = train(images, masks, rdir, cfg=round_cfg, model_cfg=model_cfg,
                           device=device, resume=True, progress=progress, should_stop=should_stop)
            for problem in result.problems[:5]:
                say(f"  skipped: {problem}")
            if result.iterations < cfg.iters:
                raise stopped(k, f"training, checkpoint at iteration {result.iterations} in {rdir / 'checkpoint.pt'}")
            emit("phase", k, phase="predict")
            report = predict_folder([images], rdir / FINAL, device=device, should_stop=should_stop)
            if report.cancelled:
                raise stopped(k, "prediction")
            write_coco(pred, build_coco_dataset(report.results))
            (rdir / "seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}")
        summaries.append(_summary(k, "SOLO" if k == 1 else "self-trained SOLO", pred, rdir, eval_images, gt, device))
        emit("round_done", k, path=str(pred))
        masks = pred
    atomic_write_json(out / "summary.json", [s.__dict__ for s in summaries], overwrite=True, backup=False)
    return summaries


def _summary(k: int, what: str, pred: Path, rdir: Path, eval_images: Path | None, gt: Path | None,
             device: str) -> RoundSummary:
    results = load_image_results(pred)
    seconds = float((rdir / "seconds.txt").read_text()) if (rdir / "seconds.txt").exists() else 0.0
    s = RoundSummary(k, what, len(results), sum(len(r.instances) for r in results.values()), seconds)
    if gt is not None:
        if k == 0 and eval_images is not None:
            ev = rdir / "eval_predictions.json"
            if not ev.exists():
                write_coco(ev, build_coco_dataset(run_freemask_batch([eval_images], device=device).results))
        elif eval_images is not None:
            ev = rdir / "eval_predictions.json"
            if not ev.exists():
                write_coco(ev, build_coco_dataset(predict_folder([eval_images], rdir / FINAL, device=device).results))
        else:
            ev = pred
        s.metrics = {key: round(v, 4) for key, v in evaluate_segm(gt, ev).items() if isinstance(v, float)}
    return s


def format_summary(rows: list[RoundSummary]) -> str:
    lines = ["| round | model | images | masks | AP | AP50 | AR100 | seconds |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r.metrics
        lines.append(f"| {r.round} | {r.what} | {r.images} | {r.masks} | {m.get('AP', '-')} | {m.get('AP50', '-')} "
                     f"| {m.get('AR100', '-')} | {r.seconds:.0f} |")
    return "\n".join(lines)
