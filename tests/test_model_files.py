"""Model files are data, never code: checkpoints hold tensors and plain values and load with weights_only."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.data.synthetic import write_synthetic_dataset
from engine.solo.checkpoint import CheckpointError, load_model, read_checkpoint
from engine.solo.config import TrainConfig
from engine.solo.train import train

SIZE = 64


class _RunsAShellCommand:
    """What a crafted model.pt pickles: unpickling it would run ``touch MARKER``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("modelfiles")
    images, gt = write_synthetic_dataset(root, 2, seed=3, size=(SIZE, SIZE), kind="cartoon")
    out = root / "run"
    train(images, gt, out, cfg=TrainConfig(iters=2, size=SIZE, checkpoint_every=1))
    return out


def _crafted(path: Path, marker: Path, real: dict | None = None) -> Path:
    state = dict(real or {"format": "freesolo-solo-v1"})
    state["payload"] = _RunsAShellCommand(marker)
    torch.save(state, path)
    return path


def test_checkpoints_hold_only_tensors_and_plain_values(run):
    for name in ("model.pt", "checkpoint.pt"):
        state = torch.load(run / name, map_location="cpu", weights_only=True)  # raises on any other object
        assert state["format"] == "freesolo-solo-v1" and state["step"] == 2
        assert isinstance(state["train_config"], dict) and isinstance(state["model_config"], dict)
    assert "numpy" not in torch.load(run / "checkpoint.pt", weights_only=True)["rng"]


def test_a_crafted_model_file_is_refused_and_runs_nothing(run, tmp_path):
    marker = tmp_path / "pwned"
    real = torch.load(run / "model.pt", weights_only=True)
    bad = _crafted(tmp_path / "model.pt", marker, real)
    with pytest.raises(CheckpointError, match="refused") as info:
        load_model(bad)
    assert str(bad) in str(info.value)
    assert not marker.exists()


def test_cli_predict_refuses_a_crafted_model_with_one_clear_line(run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    bad = _crafted(tmp_path / "shared_model.pt", marker)
    code = main(["predict", str(next(run.parent.glob("**/*.png")).parent), "--model", str(bad), "--out", str(tmp_path / "p.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert "refused" in err and str(bad) in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "p.json").exists()


def test_a_checkpoint_of_the_old_format_is_refused_clearly(run, tmp_path):
    """Before this version the trainer pickled numpy's RNG state; such files need more than weights_only."""
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["rng"] = {"numpy": np.random.get_state()}
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(tmp_path / "old.pt")


def test_training_leaves_the_process_random_state_alone(run, tmp_path):
    import random

    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    expected = (random.random(), np.random.rand(), float(torch.rand(1)))
    images, gt = write_synthetic_dataset(tmp_path / "data", 2, seed=3, size=(SIZE, SIZE), kind="cartoon")
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    train(images, gt, tmp_path / "again",
          cfg=TrainConfig(iters=2, size=SIZE, checkpoint_every=2))
    assert (random.random(), np.random.rand(), float(torch.rand(1))) == expected
