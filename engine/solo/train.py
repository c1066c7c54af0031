"""Training the class-agnostic SOLO student on coarse masks, with FreeSOLO's weak losses.

With a frozen backbone (the default) the backbone features of every training image and of its
horizontal flip are computed once and kept in memory: on a CPU that makes each iteration about
ten times cheaper, since only the FPN, heads and mask branch run forward and backward.

Checkpoints (``RUN_DIR/checkpoint.pt``, and ``model.pt`` at the end) are written atomically:
a crash or a full disk during a save leaves the previous checkpoint intact. ``resume=True``
continues from the last checkpoint with the same optimiser state and data order.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F

from engine.io.atomic import OutputError, atomic_save
from engine.io.images import NoImagesError
from engine.solo import amp as amp_mod
from engine.runtime import distributed
from engine.solo.augment import copy_paste
from engine.solo.config import SoloConfig
from engine.solo.data import TrainSample, flip_sample, load_training_set
from engine.solo.losses import (
    dice_loss,
    lab_color_similarity,
    pairwise_affinity_loss,
    sigmoid_focal_loss,
    warmup_factor,
    weak_mask_loss,
)
from engine.solo.model import SoloOutputs, SoloV2, dynamic_masks
from engine.solo.targets import TargetConfig, batch_targets

CHECKPOINT = "checkpoint.pt"
FINAL = "model.pt"
LOG = "log.jsonl"


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class TrainConfig:
    iters: int = 1500  # 300 left the student far below its coarse masks; 1500 beat them (see README)
    batch: int = 2
    size: int = 320  # training images are letterboxed to size×size
    optimizer: Literal["adamw", "sgd"] = "adamw"  # SGD (paper: lr 0.001, batch 16) barely moved at batch 2 here
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.05
    mask_loss: Literal["weak", "full"] = "full"  # measured better here than the paper's "weak" (see README)
    alpha: float = 0.1  # weight of the average-projection Dice
    mask_weight: float = 3.0
    focal_weight: float = 1.0
    pairwise_weight: float = 1.0
    pairwise_threshold: float = 0.3
    pairwise_warmup: int = 100
    copy_paste: float = 0.5  # chance that a batch image is the strong view (objects of another image pasted in)
    ignore_weight: float = 0.1  # category-loss weight of negative cells inside unselected candidates
    max_mask_positives: int = 64  # per batch, sampled at random for the mask losses (0 = all)
    positive_only_focal: bool = False  # self-training: no push to background for unlabeled objects
    checkpoint_every: int = 100
    seed: int = 0
    amp: bool = True  # mixed precision on CUDA (see engine/solo/amp.py); float32 on the CPU
    amp_dtype: Literal["float16", "bfloat16"] = "float16"  # bfloat16 also autocasts on the CPU


@dataclass
class TrainResult:
    model_path: Path
    iterations: int
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    last_losses: dict[str, float] = field(default_factory=dict)
    precision: str = "float32"
    skipped_steps: int = 0  # optimiser steps the float16 loss scaler skipped (gradients overflowed)


class FeatureBank:
    """Frozen-backbone features per (sample, flipped), computed on first use and kept."""

    def __init__(self, model: SoloV2):
        self.model = model
        self._store: dict[tuple[int, bool], dict[str, torch.Tensor]] = {}

    def get(self, index: int, sample: TrainSample, flipped: bool) -> dict[str, torch.Tensor]:
        key = (index, flipped)
        if key not in self._store:
            self._store[key] = self.compute(sample.image.flip(-1) if flipped else sample.image)
        return self._store[key]

    def compute(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of one (3, S, S) uint8 image, not kept (copy-paste views are new every time)."""
        x = self.model.backbone.preprocess(image.permute(1, 2, 0).numpy())
        with torch.no_grad():
            return {k: v.detach() for k, v in self.model.backbone_features(x).items()}


def _box_masks(masks: torch.Tensor) -> torch.Tensor:
    """1 inside each mask's bounding box (the pairwise loss is only taken there)."""
    out = torch.zeros_like(masks, dtype=torch.float32)
    for k, m in enumerate(masks > 0.5):
        ys = torch.nonzero(m.any(dim=1)).flatten()
        xs = torch.nonzero(m.any(dim=0)).flatten()
        if ys.numel():
            out[k, ys[0]: ys[-1] + 1, xs[0]: xs[-1] + 1] = 1.0
    return out


def compute_losses(
    outputs: SoloOutputs, batch: list[TrainSample], tcfg: TargetConfig, cfg: TrainConfig, step: int
) -> dict[str, torch.Tensor]:
    """Focal category loss + weak (or full) Dice + pairwise colour-affinity loss for one batch."""
    size = batch[0].image.shape[-1]
    targets = batch_targets([s.masks for s in batch], (size, size), tcfg, [s.weights for s in batch],
                            [s.ignore for s in batch], ignore_factor=cfg.ignore_weight)
    mf = outputs.mask_features
    h, w = mf.shape[-2:]
    images = torch.stack([s.image for s in batch]).float() / 255.0
    color_sim = lab_color_similarity(F.adaptive_avg_pool2d(images, (h, w)))
    n_pos = sum(int(t.numel()) for t in targets.positive_index)
    # Every positive cell predicts a full mask; an image with 20 coarse masks has hundreds of
    # them, and their mask and pairwise losses dominate the step. A random subset gives the same
    # expected loss for a fraction of the work (the category loss still sees every cell).
    keep_fraction = 1.0 if not cfg.max_mask_positives else min(1.0, cfg.max_mask_positives / max(n_pos, 1))
    cate, mask_terms, pair_terms = [], [], []
    for level, logits in enumerate(outputs.categories):
        target = targets.category[level].to(logits.device)
        weight = targets.weight[level].to(logits.device)
        if cfg.positive_only_focal:
            weight = weight * (target > 0)
        cate.append(sigmoid_focal_loss(logits[:, 0], target, weights=weight, reduction="sum"))
        idx = targets.flat_index(level)
        chosen = torch.nonzero(torch.rand(idx.numel()) < keep_fraction).flatten()
        if chosen.numel() == 0:
            continue
        idx = idx[chosen]
        kernels = outputs.kernels[level].permute(0, 2, 3, 1).reshape(-1, outputs.kernels[level].shape[1])[idx]
        b_idx = targets.batch_index[level][chosen]  # ascending: positives are concatenated image by image
        logit_masks = torch.cat([
            dynamic_masks(kernels[b_idx == b], mf[b]) for b in range(len(batch)) if bool((b_idx == b).any())
        ])
        tgt = _fit(targets.mask_targets(level)[chosen].to(mf.device), (h, w))
        prob = logit_masks.sigmoid()
        if cfg.mask_loss == "full":
            mask_terms.append(dice_loss(prob, tgt))
        else:
            mask_terms.append(weak_mask_loss(prob, tgt, alpha=cfg.alpha))
        pair_terms.append(pairwise_affinity_loss(logit_masks, color_sim[b_idx], _box_masks(tgt),
                                                 threshold=cfg.pairwise_threshold))
    # every output takes part in the graph, so every trainable parameter gets a gradient even in
    # a batch without positives (DistributedDataParallel needs the same parameters on all ranks)
    zero = (mf.sum() + sum(k.sum() for k in outputs.kernels) + sum(c.sum() for c in outputs.categories)) * 0.0
    losses = {"category": cfg.focal_weight * torch.stack(cate).sum() / max(n_pos, 1) + zero}
    losses["mask"] = cfg.mask_weight * torch.cat(mask_terms).mean() if mask_terms else zero
    ramp = warmup_factor(step, cfg.pairwise_warmup)
    losses["pairwise"] = cfg.pairwise_weight * ramp * torch.cat(pair_terms).mean() if pair_terms else zero
    return losses


def _fit(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop or zero-pad mask targets (P, h', w') to the mask feature size."""
    out = torch.zeros(t.shape[0], *size, dtype=torch.float32)
    h, w = min(size[0], t.shape[1]), min(size[1], t.shape[2])
    out[:, :h, :w] = t[:, :h, :w].float()
    return out


def save_checkpoint(path: Path, model: SoloV2, optimizer, step: int, cfg: TrainConfig, extra: dict | None = None) -> Path:
    """Write config + weights atomically; weights that are not finite are never written."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise TrainingDivergedError(
            f"weights became NaN/inf by iteration {step} ({bad[0]} …); {path.name} keeps the last good state")
    state = {
        "format": "freesolo-solo-v1",
        "model_config": model.cfg.to_dict(),
        "train_config": asdict(cfg),
        "state_dict": {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")},
        "step": step,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
        **(extra or {}),
    }
    buf = io.BytesIO()
    torch.save(state, buf)  # serialised in memory, so a failing disk surfaces as an OSError below

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(buf.getbuffer())

    try:
        return atomic_save(path, write, overwrite=True, backup=False)
    except OutputError:
        raise
    except OSError as exc:  # e.g. a full disk: the temp file is gone, the old checkpoint untouched
        kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} was written"
        raise OutputError(path, f"{exc.strerror or exc} at iteration {step}; {kept}") from exc


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (corrupt, or for another model)."""


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[SoloV2, dict]:
    """A trained model from ``model.pt`` / ``checkpoint.pt`` (config + weights) and the raw state."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != "freesolo-solo-v1":
        raise CheckpointError(f"{path}: not a freesolo SOLO checkpoint")
    try:
        model = SoloV2(SoloConfig.from_dict(state["model_config"]), device=device)
        missing, unexpected = model.load_state_dict(state["state_dict"], strict=False)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # RuntimeError: tensor shapes differ
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{path}: weights or config do not fit a SOLO model "
                              f"({type(exc).__name__}: {' '.join(first[:3])[:300]})") from None
    missing = [k for k in missing if not k.startswith("backbone.")]
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval(), state


def train(
    image_dir: str | Path,
    masks_json: str | Path,
    out_dir: str | Path,
    *,
    cfg: TrainConfig | None = None,
    model_cfg: SoloConfig | None = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    cfg = cfg or TrainConfig()
    device = distributed.local_device(torch.device(device))
    info = distributed.setup(device)
    try:
        return _train(image_dir, masks_json, Path(out_dir), cfg, model_cfg, device, resume, progress, should_stop, info)
    finally:
        distributed.teardown(info)


def _train(image_dir, masks_json, out: Path, cfg: TrainConfig, model_cfg, device, resume, progress, should_stop,
           info: distributed.DistInfo) -> TrainResult:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    samples, problems = load_training_set(image_dir, masks_json, cfg.size)
    if not samples:
        raise NoImagesError(f"no usable training images: {'; '.join(problems[:3]) or 'empty coarse-mask file'}")
    step = 0
    ckpt = out / CHECKPOINT
    if resume and ckpt.exists():
        model, state = load_model(ckpt, device)
        if model_cfg is not None and _shape(model_cfg) != _shape(model.cfg):
            raise CheckpointError(f"{ckpt}: trained with another model configuration than the one asked for "
                                  f"(e.g. another --preset); resume with the same settings or use a new run folder")
        model.train()
        step = int(state["step"])
    else:
        model = SoloV2(model_cfg or SoloConfig.cpu_small(), device=device).train()
        state = None
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if state is not None and state.get("optimizer"):
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
    else:
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
    if info.world > 1:  # same initial weights everywhere (seeded), different batches per rank
        random.seed(cfg.seed * 1000 + info.rank + step)
    precision, _note = amp_mod.resolve_precision(device, cfg.amp, cfg.amp_dtype)
    scaler = amp_mod.grad_scaler(precision)
    if state is not None and state.get("grad_scaler") and scaler.is_enabled():
        scaler.load_state_dict(state["grad_scaler"])
    skipped = skipped_run = 0
    net = distributed.wrap(model, info, device)
    per_rank = max(1, cfg.batch // info.world)  # the global batch stays cfg.batch
    seen = 0
    tcfg = TargetConfig.from_head(model.cfg.head, mask_stride=4)
    bank = FeatureBank(model)
    last: dict[str, float] = {}
    # line-buffered: every iteration is on disk at once, for anyone following the log (the panel's loss curve)
    with (out / LOG).open("a", buffering=1) if info.is_main else open(os.devnull, "w") as log:
        while step < cfg.iters:
            if should_stop is not None and should_stop():
                break
            picks = [random.randrange(len(samples)) for _ in range(per_rank)]
            seen += len(picks)
            flips = [random.random() < 0.5 for _ in picks]
            batch = [flip_sample(samples[i]) if f else samples[i] for i, f in zip(picks, flips)]
            feats = [bank.get(i, samples[i], f) for i, f in zip(picks, flips)]
            if cfg.copy_paste > 0 and len(samples) > 1:  # the strong view: objects of other images pasted in
                for b in range(len(batch)):
                    if random.random() < cfg.copy_paste:
                        batch[b] = copy_paste(batch[b], samples[random.randrange(len(samples))], random)
                        feats[b] = bank.compute(batch[b].image)
            stacked = {k: torch.cat([f[k] for f in feats]) for k in feats[0]}
            lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / max(cfg.iters, 1)))
            for group in optimizer.param_groups:
                group["lr"] = lr
            with precision.autocast():
                cats, kernels, mask_feats, strides = net(stacked)
            outputs = amp_mod.to_float(SoloOutputs(list(cats), list(kernels), mask_feats, strides))
            losses = compute_losses(outputs, batch, tcfg, cfg, step)
            total = sum(losses.values())
            if not torch.isfinite(total):  # the unscaled loss: a step the scaler skips never trips this
                hint = f" (under {precision.describe()}: try --no-amp)" if precision.enabled else ""
                raise TrainingDivergedError(f"loss became {float(total.detach())} at iteration {step}{hint}; "
                                            f"the last good checkpoint is kept in {ckpt}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            stepped = True
            if scaler.is_enabled():
                scaler.unscale_(optimizer)
                stepped = amp_mod.gradients_finite(params)  # if not, scaler.step skips and the scale drops
            scaler.step(optimizer)
            scaler.update()
            skipped_run = 0 if stepped else skipped_run + 1
            skipped += not stepped
            if skipped_run >= amp_mod.MAX_SKIPPED_STEPS:
                raise TrainingDivergedError(
                    f"gradients non-finite for {skipped_run} iterations in a row under {precision.describe()} "
                    f"(up to iteration {step}); try --no-amp; the last good checkpoint is kept in {ckpt}")
            step += 1
            last = {k: round(float(v.detach()), 5) for k, v in losses.items()}
            last |= {"total": round(float(total.detach()), 5), "lr": lr}
            if not stepped:
                last["amp_skipped"] = 1
            log.write(json.dumps({"iter": step, **last}) + "\n")
            if progress is not None and info.is_main:
                progress(step, cfg.iters, last)
            if step % cfg.checkpoint_every == 0 and info.is_main:
                log.flush()
                save_checkpoint(ckpt, model, optimizer, step, cfg, _scaler_state(scaler))
    counts = distributed.gather_counts(seen, info)
    final = ckpt
    if info.is_main:
        extra = {"images_per_rank": counts, "world_size": info.world}
        save_checkpoint(ckpt, model, optimizer, step, cfg, extra | _scaler_state(scaler))
        if step >= cfg.iters:
            final = save_checkpoint(out / FINAL, model, None, step, cfg, extra)
    return TrainResult(final, step, problems, time.perf_counter() - t0, last, precision.describe(), skipped)


def _shape(cfg: SoloConfig) -> dict:
    """The parts of a config that fix the weights (inference thresholds may differ on resume)."""
    return {k: v for k, v in cfg.to_dict().items() if k != "inference"}


def _scaler_state(scaler) -> dict:
    return {"grad_scaler": scaler.state_dict()} if scaler.is_enabled() else {}
