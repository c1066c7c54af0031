"""Training the class-agnostic SOLO student on coarse masks, with FreeSOLO's weak losses.

``train`` reads as its steps: load the training set, build (or resume) a ``Trainer``
(``engine/solo/trainer.py``), attach its hooks, run.

With a frozen backbone (the default) the backbone features of every training image and of its
horizontal flip are computed once and kept in memory: on a CPU that makes each iteration about
ten times cheaper, since only the FPN, heads and mask branch run forward and backward.

Checkpoints (``RUN_DIR/checkpoint.pt``, and ``model.pt`` at the end; ``engine/solo/checkpoint.py``)
are written atomically: a crash or a full disk during a save leaves the previous checkpoint
intact. ``resume=True`` continues from the last checkpoint with the same optimiser state and data order.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from engine.io.images import NoImagesError
from engine.solo import amp as amp_mod
from engine.runtime import distributed
from engine.solo.config import SoloConfig, TrainConfig
from engine.solo.checkpoint import CHECKPOINT, CheckpointError, load_model, weights_shape
from engine.solo import tiles
from engine.solo.data import (
    TrainSample,
    embedding_dim_of,
    load_training_set,
    positive_masks,
    read_training_masks,
)
from engine.solo.losses import (
    dice_loss,
    embedding_cosine_loss,
    focal_loss_positive_only,
    lab_color_similarity,
    pairwise_affinity_loss,
    sigmoid_focal_loss,
    warmup_factor,
    weak_mask_loss,
)
from engine.solo.model import SoloOutputs, SoloV2, dynamic_masks
from engine.solo.targets import TargetConfig, batch_targets
from engine.structures import InstanceMask
from engine.solo.trainer import (
    AmpSkipHook,
    CheckpointHook,
    LogHook,
    ProgressHook,
    StopHook,
    FeatureBank,
    Trainer,
    TrainerRng,
)


class MissingEmbeddingsError(ValueError):
    """The embedding branch was asked for but the training masks carry no query embeddings."""


@dataclass
class TrainResult:
    model_path: Path
    iterations: int
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    last_losses: dict[str, float] = field(default_factory=dict)
    precision: str = "float32"
    skipped_steps: int = 0  # optimiser steps the float16 loss scaler skipped (gradients overflowed)


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
    outputs: SoloOutputs, batch: list[TrainSample], tcfg: TargetConfig, cfg: TrainConfig, step: int,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Focal category loss + weak (or full) Dice + pairwise colour-affinity loss for one batch.

    ``generator`` draws the random subset of mask positives (the trainer passes its own).
    """
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
        focal = focal_loss_positive_only if cfg.positive_only_focal else sigmoid_focal_loss
        cate.append(focal(logits[:, 0], target, weights=weight, reduction="sum"))
        idx = targets.flat_index(level)
        chosen = torch.nonzero(torch.rand(idx.numel(), generator=generator) < keep_fraction).flatten()
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
    zero = (mf.sum() + sum(k.sum() for k in outputs.kernels) + sum(c.sum() for c in outputs.categories)
            + sum(e.sum() for e in outputs.embeddings)) * 0.0
    losses = {"category": cfg.focal_weight * torch.stack(cate).sum() / max(n_pos, 1) + zero}
    losses["mask"] = cfg.mask_weight * torch.cat(mask_terms).mean() if mask_terms else zero
    ramp = warmup_factor(step, cfg.pairwise_warmup)
    losses["pairwise"] = cfg.pairwise_weight * ramp * torch.cat(pair_terms).mean() if pair_terms else zero
    if cfg.embedding_weight > 0 and outputs.embeddings:
        losses["embedding"] = cfg.embedding_weight * embedding_loss(outputs, batch, targets) + zero
    return losses


def embedding_loss(outputs: SoloOutputs, batch: list[TrainSample], targets) -> torch.Tensor:
    """FreeSOLO's semantic embedding loss: the mean of 1 - cos(predicted, Free Mask embedding)
    over every positive cell whose object has an embedding (0 when none has)."""
    dim = outputs.embeddings[0].shape[1]
    rows = [s.embeddings if s.embeddings is not None else torch.zeros(s.masks.shape[0], dim) for s in batch]
    table = torch.cat(rows)
    first = torch.tensor([0] + [r.shape[0] for r in rows[:-1]]).cumsum(0)  # each image's first row
    terms = []
    for level, emb in enumerate(outputs.embeddings):
        wanted = table[first[targets.batch_index[level]] + targets.instance_index[level]].to(emb.device)
        has = wanted.abs().sum(1) > 0
        if bool(has.any()):
            predicted = emb.permute(0, 2, 3, 1).reshape(-1, dim)[targets.flat_index(level)]
            terms.append(embedding_cosine_loss(predicted[has], wanted[has]))
    return torch.cat(terms).mean() if terms else outputs.embeddings[0].sum() * 0.0


def _fit(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop or zero-pad mask targets (P, h', w') to the mask feature size."""
    out = torch.zeros(t.shape[0], *size, dtype=torch.float32)
    h, w = min(size[0], t.shape[1]), min(size[1], t.shape[2])
    out[:, :h, :w] = t[:, :h, :w].float()
    return out


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
    labels: str | Path | None = None,
) -> TrainResult:
    """Train SOLO on ``masks_json`` (coarse masks of the images in ``image_dir``) into ``out_dir``.

    ``labels``: a COCO file of trusted masks (a person's corrections) for some images; those
    images are complete, learn from these masks only and are sampled ``cfg.trusted_weight`` times
    as often.
    """
    cfg = cfg or TrainConfig()
    device = distributed.local_device(torch.device(device))
    info = distributed.setup(device)
    try:
        t0 = time.perf_counter()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        positives = functools.cache(lambda: positive_masks(*read_training_masks(masks_json, labels, [])))
        cfg = resolve_scale(cfg, positives)
        model_cfg, dim = with_embedding_branch(model_cfg, cfg, positives, masks_json)
        samples, problems = load_training_set(image_dir, masks_json, cfg.size, trusted_json=labels, scale=cfg.scale,
                                              embedding_dim=dim)
        if not samples:
            raise NoImagesError(f"no usable training images: {'; '.join(problems[:3]) or 'empty coarse-mask file'}")
        trainer = build_trainer(samples, out, cfg, model_cfg, device, info, resume)
        skips, checkpoints, log = AmpSkipHook(), CheckpointHook(), LogHook(trainer)
        trainer.hooks = [StopHook(should_stop), skips, log, ProgressHook(progress), checkpoints]
        try:
            trainer.run()
        finally:
            log.after_train(trainer)  # closes the log also when training raised
        return TrainResult(checkpoints.final, trainer.step_no, problems, time.perf_counter() - t0, log.last,
                           trainer.precision.describe(), skips.skipped)
    finally:
        distributed.teardown(info)


def resolve_scale(cfg: TrainConfig, positives: Callable[[], list[InstanceMask]]) -> TrainConfig:
    """``cfg`` with its ``scale`` set from ``object_px`` and the training masks (``positives()``; kept
    when already set), so that the checkpoint tells prediction the scale the student learnt at."""
    if cfg.scale > 0 or cfg.object_px <= 0:
        return cfg
    return replace(cfg, scale=tiles.folder_scale(positives(), cfg.object_px))


def with_embedding_branch(model_cfg: SoloConfig | None, cfg: TrainConfig,
                          positives: Callable[[], list[InstanceMask]], masks_json: str | Path
                          ) -> tuple[SoloConfig | None, int]:
    """(model config, embedding length): with ``cfg.embedding_weight`` > 0 the head gets an
    embedding branch as long as the training masks' (``positives()``) query embeddings; without
    embeddings in the masks that is an error, said once."""
    if cfg.embedding_weight <= 0:
        return model_cfg, 0
    dim = embedding_dim_of(positives())
    if not dim:
        raise MissingEmbeddingsError(f"{masks_json}: no mask has a query embedding, so the embedding branch has nothing to "
                         "learn (Free Mask's COCO files carry them); train without --embedding-weight")
    base = model_cfg or SoloConfig.cpu_small()
    return replace(base, head=replace(base.head, embedding_dim=dim)), dim


def build_trainer(samples: list[TrainSample], out: Path, cfg: TrainConfig, model_cfg: SoloConfig | None,
                  device: torch.device, info: distributed.DistInfo, resume: bool) -> Trainer:
    """A fresh trainer, or one continuing ``out/checkpoint.pt`` (same weights, optimiser, scaler and RNG)."""
    ckpt = out / CHECKPOINT
    state = None
    if resume and ckpt.exists():
        model, state = load_model(ckpt, device)
        if model_cfg is not None and weights_shape(model_cfg) != weights_shape(model.cfg):
            raise CheckpointError(f"{ckpt}: trained with another model configuration than the one asked for "
                                  f"(e.g. another --preset); resume with the same settings or use a new run folder")
    else:
        with torch.random.fork_rng(devices=[]):  # seeded initial weights, the process's RNG untouched
            torch.manual_seed(cfg.seed)
            model = SoloV2(model_cfg or SoloConfig.cpu_small(), device=device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    precision, _note = amp_mod.resolve_precision(device, cfg.amp, cfg.amp_dtype)
    scaler = amp_mod.grad_scaler(precision)
    trainer = Trainer(model, distributed.wrap(model, info, device), optimizer, scaler, precision, samples,
                      FeatureBank(model), cfg, info, out, TrainerRng(cfg.seed), compute_losses)
    if state is not None:
        trainer.step_no = int(state["step"])
        if state.get("optimizer"):
            optimizer.load_state_dict(state["optimizer"])
        if state.get("rng"):
            trainer.rng.restore(state["rng"])
        if state.get("grad_scaler") and scaler.is_enabled():
            scaler.load_state_dict(state["grad_scaler"])
    if info.world > 1:  # same initial weights everywhere (seeded), different batches per rank
        trainer.rng.py.seed(cfg.seed * 1000 + info.rank + trainer.step_no)
    return trainer
