"""The SOLO training loop, with its side concerns as hooks (detectron2's shape).

``Trainer.step`` is one iteration: sample a batch (with flips and copy-paste views), set the
learning rate, forward, losses, the divergence guard, backward and the (loss-scaled) optimiser
step. Everything else happens in hooks, called in order before and after each step and at the
end: stop requests, the loss log, progress, checkpoints and the mixed-precision skip guard.

The trainer owns its random state (a ``random.Random`` for sampling and a ``torch.Generator``
for the mask-positive subsets), saved in every checkpoint, so a resumed run draws the same
batches and the process-wide ``random``/``numpy``/``torch`` states are never touched.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from engine.runtime import distributed
from engine.solo import amp as amp_mod
from engine.solo.augment import copy_paste
from engine.solo.config import TrainConfig
from engine.solo.checkpoint import CHECKPOINT, FINAL, LOG, save_checkpoint
from engine.solo.data import TrainSample, flip_sample
from engine.solo.model import SoloOutputs, SoloV2
from engine.solo.targets import TargetConfig

class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class FeatureBank:
    """Backbone features per (sample, flipped). A frozen backbone's are computed on first use and
    kept; a trained backbone's are computed at every use, with their graph (nothing to keep)."""

    def __init__(self, model: SoloV2):
        self.model = model
        self._store: dict[tuple[int, bool], dict[str, torch.Tensor]] = {}

    def get(self, index: int, sample: TrainSample, flipped: bool) -> dict[str, torch.Tensor]:
        image = sample.image.flip(-1) if flipped else sample.image
        if not self.model.frozen:
            return self.compute(image)
        key = (index, flipped)
        if key not in self._store:
            self._store[key] = self.compute(image)
        return self._store[key]

    def compute(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of one (3, S, S) uint8 image, not kept (copy-paste views are new every time)."""
        x = self.model.backbone.preprocess(image.permute(1, 2, 0).numpy())
        if not self.model.frozen:
            return self.model.backbone_features(x)  # with autograd: the backbone learns
        with torch.no_grad():
            return {k: v.detach() for k, v in self.model.backbone_features(x).items()}


class TrainerRng:
    """The trainer's own random state: Python's for sampling, torch's for mask-positive subsets."""

    def __init__(self, seed: int):
        self.py = random.Random(seed)
        self.torch = torch.Generator().manual_seed(seed)

    def state(self) -> dict:
        version, internal, gauss = self.py.getstate()
        return {"python": [version, list(internal), gauss], "torch": self.torch.get_state()}

    def restore(self, state: dict) -> None:
        version, internal, gauss = state["python"]
        self.py.setstate((version, tuple(internal), gauss))
        self.torch.set_state(state["torch"])


@dataclass
class StepResult:
    losses: dict[str, float]
    stepped: bool  # False when the float16 loss scaler skipped the optimiser step


class Hook:
    """Called by ``Trainer.run``: ``before_step`` (may set ``trainer.stop``), ``after_step``, ``after_train``."""

    def before_step(self, trainer: "Trainer") -> None:
        pass

    def after_step(self, trainer: "Trainer", result: StepResult) -> None:
        pass

    def after_train(self, trainer: "Trainer") -> None:
        pass


@dataclass
class Trainer:
    model: SoloV2
    net: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    precision: amp_mod.Precision
    samples: list[TrainSample]
    bank: FeatureBank
    cfg: TrainConfig
    info: distributed.DistInfo
    out: Path
    rng: TrainerRng
    losses_fn: Callable
    step_no: int = 0
    seen: int = 0
    stop: bool = False
    hooks: list[Hook] = field(default_factory=list)

    @property
    def sampling_weights(self) -> list[float] | None:
        if not any(s.trusted for s in self.samples):
            return None
        return [self.cfg.trusted_weight if s.trusted else 1.0 for s in self.samples]

    @property
    def tcfg(self) -> TargetConfig:
        return TargetConfig.from_head(self.model.cfg.head, mask_stride=4)

    def sample(self) -> tuple[list[TrainSample], dict[str, torch.Tensor]]:
        """This rank's batch: random images, random flips, and copy-paste views (their features new)."""
        n, rng = len(self.samples), self.rng.py
        per_rank = max(1, self.cfg.batch // self.info.world)  # the global batch stays cfg.batch
        if self.sampling_weights is None:
            picks = [rng.randrange(n) for _ in range(per_rank)]
        else:  # images with trusted labels are drawn cfg.trusted_weight times as often
            picks = rng.choices(range(n), weights=self.sampling_weights, k=per_rank)
        self.seen += len(picks)
        flips = [rng.random() < 0.5 for _ in picks]
        batch = [flip_sample(self.samples[i]) if f else self.samples[i] for i, f in zip(picks, flips)]
        feats = [self.bank.get(i, self.samples[i], f) for i, f in zip(picks, flips)]
        if self.cfg.copy_paste > 0 and n > 1:  # the strong view: objects of other images pasted in
            for b in range(len(batch)):
                if rng.random() < self.cfg.copy_paste:
                    batch[b] = copy_paste(batch[b], self.samples[rng.randrange(n)], rng)
                    feats[b] = self.bank.compute(batch[b].image)
        return batch, {k: torch.cat([f[k] for f in feats]) for k in feats[0]}

    def learning_rate(self) -> float:
        """Cosine decay from ``cfg.lr`` to 0 over ``cfg.iters``."""
        return self.cfg.lr * 0.5 * (1 + math.cos(math.pi * self.step_no / max(self.cfg.iters, 1)))

    def step(self) -> StepResult:
        batch, stacked = self.sample()
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.precision.autocast():
            cats, kernels, mask_feats, strides, embeddings = self.net(stacked)
        outputs = amp_mod.to_float(SoloOutputs(list(cats), list(kernels), mask_feats, strides, list(embeddings)))
        losses = self.losses_fn(outputs, batch, self.tcfg, self.cfg, self.step_no, self.rng.torch)
        total = sum(losses.values())
        if not torch.isfinite(total):  # the unscaled loss: a step the scaler skips never trips this
            hint = f" (under {self.precision.describe()}: try --no-amp)" if self.precision.enabled else ""
            raise TrainingDivergedError(f"loss became {float(total.detach())} at iteration {self.step_no}{hint}; "
                                        f"the last good checkpoint is kept in {self.out / CHECKPOINT}")
        stepped = self._optimise(total)
        self.step_no += 1
        row = {k: round(float(v.detach()), 5) for k, v in losses.items()}
        row |= {"total": round(float(total.detach()), 5), "lr": lr}
        if not stepped:
            row["amp_skipped"] = 1
        return StepResult(row, stepped)

    def _optimise(self, total: torch.Tensor) -> bool:
        """Backward and the optimiser step through the loss scaler; False if the scaler skipped it."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        stepped = True
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
            stepped = amp_mod.gradients_finite(p for g in self.optimizer.param_groups for p in g["params"])
        self.scaler.step(self.optimizer)  # skips the step itself when gradients are not finite
        self.scaler.update()
        return stepped

    def run(self) -> None:
        while self.step_no < self.cfg.iters:
            for hook in self.hooks:
                hook.before_step(self)
            if self.stop:
                break
            result = self.step()
            for hook in self.hooks:
                hook.after_step(self, result)
        for hook in self.hooks:
            hook.after_train(self)

    def save(self, path: Path, *, with_optimizer: bool = True, extra: dict | None = None) -> Path:
        scaler = {"grad_scaler": self.scaler.state_dict()} if with_optimizer and self.scaler.is_enabled() else {}
        return save_checkpoint(path, self.model, step=self.step_no, train_config=asdict(self.cfg),
                               optimizer=self.optimizer if with_optimizer else None, rng=self.rng.state(),
                               extra=scaler | (extra or {}))


class StopHook(Hook):
    """Ends training before the next step when ``should_stop()`` says so (a checkpoint follows)."""

    def __init__(self, should_stop: Callable[[], bool] | None):
        self.should_stop = should_stop

    def before_step(self, trainer: Trainer) -> None:
        if self.should_stop is not None and self.should_stop():
            trainer.stop = True


class LogHook(Hook):
    """One JSON line per iteration in ``RUN_DIR/log.jsonl``, line-buffered so followers (the panel's
    loss curve) see each at once; only the main rank writes."""

    def __init__(self, trainer: Trainer):
        path = trainer.out / LOG
        if trainer.info.is_main:
            _drop_partial_line(path)
        self._file = path.open("a", buffering=1) if trainer.info.is_main else open(os.devnull, "w")
        self.last: dict[str, float] = {}

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        self.last = result.losses
        self._file.write(json.dumps({"iter": trainer.step_no, **result.losses}) + "\n")

    def after_train(self, trainer: Trainer) -> None:
        self._file.close()


def _drop_partial_line(path: Path) -> None:
    """Cut a half-written last line (the process was killed mid-write), so a resumed run appends
    whole lines only."""
    if not path.is_file():
        return
    with path.open("rb+") as fh:
        data = fh.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            fh.truncate(end)


class ProgressHook(Hook):
    def __init__(self, progress: Callable[[int, int, dict[str, float]], None] | None):
        self.progress = progress

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        if self.progress is not None and trainer.info.is_main:
            self.progress(trainer.step_no, trainer.cfg.iters, result.losses)


class AmpSkipHook(Hook):
    """Counts optimiser steps the float16 loss scaler skipped; stops training after
    ``amp.MAX_SKIPPED_STEPS`` in a row (gradients that never fit in float16)."""

    def __init__(self):
        self.skipped = 0
        self._run = 0

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        self._run = 0 if result.stepped else self._run + 1
        self.skipped += not result.stepped
        if self._run >= amp_mod.MAX_SKIPPED_STEPS:
            raise TrainingDivergedError(
                f"gradients non-finite for {self._run} iterations in a row under {trainer.precision.describe()} "
                f"(up to iteration {trainer.step_no - 1}); try --no-amp; the last good checkpoint is kept in "
                f"{trainer.out / CHECKPOINT}")


class CheckpointHook(Hook):
    """``checkpoint.pt`` every ``cfg.checkpoint_every`` iterations and at the end (stopped or not);
    ``model.pt`` when all iterations ran. Only the main rank writes."""

    def __init__(self):
        self.final: Path | None = None

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        if trainer.step_no % trainer.cfg.checkpoint_every == 0 and trainer.info.is_main:
            trainer.save(trainer.out / CHECKPOINT)

    def after_train(self, trainer: Trainer) -> None:
        counts = distributed.gather_counts(trainer.seen, trainer.info)
        self.final = trainer.out / CHECKPOINT
        if trainer.info.is_main:
            extra = {"images_per_rank": counts, "world_size": trainer.info.world}
            trainer.save(trainer.out / CHECKPOINT, extra=extra)
            if trainer.step_no >= trainer.cfg.iters:
                self.final = trainer.save(trainer.out / FINAL, with_optimizer=False, extra=extra)
