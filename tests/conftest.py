"""Shared fixtures: small generated data and one backbone per test session (real, not mocked)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def extractor():
    from engine.freemask.features import FeatureConfig, FeatureExtractor

    return FeatureExtractor(FeatureConfig(), device="cpu")


@pytest.fixture(scope="session")
def photo_sample() -> tuple[np.ndarray, np.ndarray]:
    from engine.data.synthetic import make_sample

    return make_sample(3, (192, 192), kind="photo")


@pytest.fixture(scope="session")
def photo_features(extractor, photo_sample):
    return extractor.extract(photo_sample[0])


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's real feature cache or panel settings from a test."""
    monkeypatch.setenv("FREESOLO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FREESOLO_NAPARI_SETTINGS", str(tmp_path / "settings" / "settings.json"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: tiny models run as fast, the 2 ranks of a sharded run each get
    one core (same float sums as the reference), and on a shared 2-core machine two busy-waiting
    threads per process are many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # so the CLI's configure_cpu_threads leaves it at 1
        yield
    torch.set_num_threads(before)


@pytest.fixture
def panel(make_napari_viewer, qtbot):
    """A real viewer with the synthetic photo sample and the FreeSOLO panel docked via the manifest."""
    viewer = make_napari_viewer()
    viewer.open_sample("freesolo-napari", "synthetic-photo")
    _dock, widget = viewer.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    return viewer, widget
