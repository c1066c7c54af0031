"""SOLO checkpoints: what a run folder's ``checkpoint.pt`` and ``model.pt`` hold, written atomically
and read without running code.

A checkpoint is a dict of tensors and plain Python values only (str, int, float, bool, None,
lists, tuples, dicts): the model and training configs as dicts, the head weights, the step, the
optimiser and loss-scaler states and the trainer's RNG states. ``load_model`` reads it with
``torch.load(weights_only=True)``, so a crafted file (lab members share model files) cannot run
code; a file that needs more than that is refused with a message naming it.

Writes are atomic: a crash or a full disk during a save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch

from engine.io.atomic import OutputError, atomic_save
from engine.solo.config import SoloConfig
from engine.solo.model import SoloV2

FORMAT = "freesolo-solo-v1"
CHECKPOINT = "checkpoint.pt"
FINAL = "model.pt"
LOG = "log.jsonl"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (corrupt, unsafe, or for another model)."""


def save_checkpoint(path: Path, model: SoloV2, *, step: int, train_config: dict, optimizer=None,
                    rng: dict | None = None, extra: dict | None = None) -> Path:
    """Write ``path`` atomically; returns it. A frozen backbone's weights are not saved (they are the
    pretrained ones); a trained backbone's are."""
    frozen = model.cfg.backbone.frozen
    state = {
        "format": FORMAT,
        "model_config": model.cfg.to_dict(),
        "train_config": dict(train_config),
        "state_dict": {k: v for k, v in model.state_dict().items() if not (frozen and k.startswith("backbone."))},
        "step": int(step),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": rng or {},
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


def read_checkpoint(path: str | Path) -> dict:
    """The raw state of a freesolo SOLO checkpoint, read with ``weights_only=True``."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = [ln.strip() for ln in str(exc).splitlines() if "global" in ln.lower()]
        if not detail:  # not a refused object: a damaged or foreign file
            raise CheckpointError(f"{path}: not a readable checkpoint (the file is damaged or not a "
                                  f"PyTorch file)") from None
        raise CheckpointError(
            f"{path}: refused: the file holds Python objects beyond tensors and plain values, which could run "
            f"code when loaded, so it was not loaded ({detail[0][:200]}). Use a model trained by this version "
            "of freesolo, or retrain it") from None
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a freesolo SOLO checkpoint")
    return state


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[SoloV2, dict]:
    """A trained model from ``model.pt`` / ``checkpoint.pt`` (config + weights) and the raw state."""
    state = read_checkpoint(path)
    try:
        model = SoloV2(SoloConfig.from_dict(state["model_config"]), device=device)
        missing, unexpected = model.load_state_dict(state["state_dict"], strict=False)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # RuntimeError: tensor shapes differ
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{path}: weights or config do not fit a SOLO model "
                              f"({type(exc).__name__}: {' '.join(first[:3])[:300]})") from None
    missing = [k for k in missing if not (model.cfg.backbone.frozen and k.startswith("backbone."))]
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval(), state


def weights_shape(cfg: SoloConfig) -> dict:
    """The parts of a config that fix the weights (inference thresholds may differ on resume)."""
    return {k: v for k, v in cfg.to_dict().items() if k != "inference"}


def export_backbone(model_path: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """The backbone of a trained model as a plain state dict in its original key layout, which
    ``--backbone OUT`` (and downstream code) loads: FreeSOLO's "pre-trained model for down-stream tasks"."""
    model, _state = load_model(model_path)
    weights = {k: v.detach().cpu().clone() for k, v in model.backbone.state_dict().items()}
    buf = io.BytesIO()
    torch.save(weights, buf)
    return atomic_save(Path(out), lambda tmp: Path(tmp).write_bytes(buf.getvalue()), overwrite=overwrite)
