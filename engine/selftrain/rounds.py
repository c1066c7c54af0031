"""Self-training rounds (``freesolo selftrain``): Free Mask -> SOLO -> SOLO on its own predictions.

RUN_DIR/round_0/  Free Mask's coarse masks (coarse.json) and the settings that made them (settings.json)
RUN_DIR/round_1/  SOLO trained on them (model.pt, predictions.json)
RUN_DIR/round_K/  for K >= 2, a SOLO retrained (from the pretrained backbone) on round K-1's
                  selected predictions (score >= keep_thr, at most max_keep plausible ones per image)

Every round is skipped when its outputs exist, and a round's training resumes from its last
checkpoint, so an interrupted run continues where it stopped, and the same call with more
``rounds`` (and, say, new trusted labels) adds rounds to a finished run, keeping the earlier ones. ``should_stop`` ends a run
cleanly (the current round's training saves its checkpoint first) by raising
``SelfTrainStopped``; ``events`` receives a dict at each phase change and finished round, for
front ends that show progress (the napari panel reads them as JSON lines).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from engine.io.atomic import atomic_write_bytes, atomic_write_json
from engine.io.coco import build_coco_dataset, load_image_results, write_coco
from engine.eval.coco_eval import evaluate_segm
from engine.generators.pipeline import run_freemask_batch
from engine.solo.config import SoloConfig
from engine.solo.predict import predict_folder
from engine.selftrain.pseudo import SelectionConfig, select_pseudo_labels
from engine.solo.config import TrainConfig
from engine.solo.train import train
from engine.selftrain import events as ev
from engine.selftrain.config import CoarseSettings, SelfTrainConfig
from engine.selftrain.layout import RunLayout
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
    trusted: str = ""  # the trusted labels the round trained with (relative to the run folder), if any


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


@dataclass
class _Run:
    """What every round of one ``selftrain`` call shares."""

    images: Path
    layout: RunLayout
    cfg: SelfTrainConfig
    train_cfg: TrainConfig
    model_cfg: SoloConfig | None
    device: str
    say: Say
    progress: Callable | None
    should_stop: Callable[[], bool] | None
    events: Events | None
    labels: Path | None = None
    coarse: CoarseSettings = field(default_factory=CoarseSettings)

    def emit(self, kind: str, k: int, **info) -> None:
        if self.events is not None:
            self.events({"event": kind, "round": k, "rounds": self.cfg.rounds, **info})

    def stopped(self, k: int, where: str) -> SelfTrainStopped:
        self.emit(ev.STOPPED, k, phase=where)
        return SelfTrainStopped(f"stopped during round {k} ({where}); run the same command again to continue")


def selftrain(
    images: Path,
    out: Path,
    *,
    config: SelfTrainConfig | None = None,
    train_cfg: TrainConfig | None = None,
    model_cfg: SoloConfig | None = None,
    device: str = "cpu",
    eval_images: Path | None = None,
    gt: Path | None = None,
    say: Say = print,
    progress=None,
    should_stop: Callable[[], bool] | None = None,
    events: Events | None = None,
    labels: Path | None = None,
    coarse: CoarseSettings | None = None,
) -> list[RoundSummary]:
    """Round 0 (Free Mask), then ``config.rounds`` SOLO rounds; every finished round is kept and skipped
    on a rerun. Returns one summary per round (with metrics when ``gt`` is given).

    ``labels``: trusted masks (a COCO file) for some images, used by every round instead of Free
    Mask's or a round's masks for those images; each round records the ones it used
    (``round_K/trusted.json``). ``coarse``: how round 0 makes the coarse masks (recorded in
    ``round_0/settings.json``; a finished round 0 is kept whatever ``coarse`` says)."""
    layout = RunLayout(out)
    run = _Run(Path(images), layout, config or SelfTrainConfig(), train_cfg or TrainConfig(), model_cfg, device,
               say, progress, should_stop, events, Path(labels) if labels is not None else None,
               coarse or CoarseSettings())
    layout.root.mkdir(parents=True, exist_ok=True)
    _coarse_round(run)
    summaries = [_summary(0, "Free Mask", layout, eval_images, gt, device)]
    run.emit(ev.ROUND_DONE, 0, path=str(layout.coarse()))
    for k in range(1, run.cfg.rounds + 1):
        _training_round(run, k, _write_train_masks(run, k))
        summaries.append(_summary(k, "SOLO" if k == 1 else "self-trained SOLO", layout, eval_images, gt, device))
        run.emit(ev.ROUND_DONE, k, path=str(layout.predictions(k)))
    atomic_write_json(layout.summary(), [s.__dict__ for s in summaries], overwrite=True, backup=False)
    return summaries


def _coarse_round(run: _Run) -> None:
    """Round 0: Free Mask's coarse masks of the folder (skipped when they exist)."""
    if run.layout.coarse().exists():
        return
    t0 = time.perf_counter()
    run.say("round 0: Free Mask coarse masks")
    run.emit(ev.PHASE, 0, phase="freemask")
    c = run.coarse
    report = run_freemask_batch([run.images], feature_config=c.features, params=c.params, device=run.device,
                                cache_dir=c.cache_dir, use_cache=c.use_cache, progress=run.progress,
                                should_stop=run.should_stop, generators=c.generators, tile=c.tile,
                                tile_overlap=c.tile_overlap)
    if report.cancelled:
        raise run.stopped(0, "freemask")
    atomic_write_json(run.layout.coarse_settings(), c.record(), overwrite=True, backup=False)
    write_coco(run.layout.coarse(), build_coco_dataset(report.results))
    run.layout.seconds(0).write_text(f"{time.perf_counter() - t0:.1f}")


def coarse_selection(cfg: SelfTrainConfig) -> SelectionConfig:
    """Round 1's rule for Free Mask's masks: a folder-level score floor (the ``coarse_quantile`` of
    all coarse scores), at most ``coarse_top`` per image, objects down to 0.05 % of the image, and
    no positive mostly (> 50 %) under a better one (see ``engine/selftrain/pseudo.py`` for the
    measurement that chose it)."""
    return SelectionConfig(top=cfg.coarse_top, score_quantile=cfg.coarse_quantile, min_area_frac=0.0005,
                           max_covered=0.5)


def _write_train_masks(run: _Run, k: int) -> Path:
    """The masks round ``k`` learns from: round 1 the selected coarse masks (all of them with
    ``coarse_top`` 0), later rounds the selected predictions of round ``k - 1``."""
    layout, cfg = run.layout, run.cfg
    if k == 1 and cfg.coarse_top <= 0:
        return layout.coarse()
    target = layout.train_masks(k)
    if not target.exists():
        if k == 1:
            coarse = list(load_image_results(layout.coarse()).values())
            selected = select_pseudo_labels(coarse, coarse_selection(cfg))
        else:
            selected = keep_predictions(layout.predictions(k - 1), cfg.keep_thr, cfg.max_keep, cfg.ignore_min_score)
        write_coco(target, build_coco_dataset(selected))
    return target


def _training_round(run: _Run, k: int, masks: Path) -> None:
    """Train round ``k`` (resuming its checkpoint) and predict the folder (skipped when done)."""
    layout = run.layout
    if layout.predictions(k).exists():
        return
    t0 = time.perf_counter()
    run.say(f"round {k}: training SOLO on {masks.relative_to(layout.root)}")
    run.emit(ev.PHASE, k, phase="train", iters=run.train_cfg.iters)
    round_cfg = replace(run.train_cfg, positive_only_focal=run.cfg.positive_only and k >= 2)
    trusted = _record_trusted(run, k)
    result = train(run.images, masks, layout.round_dir(k), cfg=round_cfg, model_cfg=run.model_cfg,
                   device=run.device, resume=True, progress=run.progress, should_stop=run.should_stop, labels=trusted)
    for problem in result.problems[:5]:
        run.say(f"  skipped: {problem}")
    if result.iterations < run.train_cfg.iters:
        raise run.stopped(k, f"training, checkpoint at iteration {result.iterations} in {layout.checkpoint(k)}")
    run.emit(ev.PHASE, k, phase="predict")
    report = predict_folder([run.images], layout.model(k), device=run.device, should_stop=run.should_stop)
    if report.cancelled:
        raise run.stopped(k, "prediction")
    write_coco(layout.predictions(k), build_coco_dataset(report.results))
    layout.seconds(k).write_text(f"{time.perf_counter() - t0:.1f}")


def _record_trusted(run: _Run, k: int) -> Path | None:
    """Round ``k``'s copy of the trusted labels (kept as first written, so a resumed round uses the
    labels it started with, given again or not), or None when the round has none."""
    target = run.layout.trusted(k)
    if run.labels is None:
        return target if target.is_file() else None
    if not target.exists():
        atomic_write_bytes(target, run.labels.read_bytes())
    return target


def _summary(k: int, what: str, layout: RunLayout, eval_images: Path | None, gt: Path | None,
             device: str) -> RoundSummary:
    pred = layout.masks(k)
    results = load_image_results(pred)
    seconds = float(layout.seconds(k).read_text()) if layout.seconds(k).exists() else 0.0
    s = RoundSummary(k, what, len(results), sum(len(r.instances) for r in results.values()), seconds)
    if layout.trusted(k).is_file():
        s.trusted = layout.trusted(k).relative_to(layout.root).as_posix()
    if gt is not None:
        ev_path = layout.eval_predictions(k) if eval_images is not None else pred
        if eval_images is not None and not ev_path.exists():
            report = (run_freemask_batch([eval_images], device=device) if k == 0
                      else predict_folder([eval_images], layout.model(k), device=device))
            write_coco(ev_path, build_coco_dataset(report.results))
        s.metrics = {key: round(v, 4) for key, v in evaluate_segm(gt, ev_path).items() if isinstance(v, float)}
    return s


def format_summary(rows: list[RoundSummary]) -> str:
    lines = ["| round | model | images | masks | AP | AP50 | AR100 | seconds |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r.metrics
        lines.append(f"| {r.round} | {r.what} | {r.images} | {r.masks} | {m.get('AP', '-')} | {m.get('AP50', '-')} "
                     f"| {m.get('AR100', '-')} | {r.seconds:.0f} |")
    return "\n".join(lines)
