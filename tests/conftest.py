"""Shared fixtures: small generated data and one backbone per test session (real, not mocked)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def extractor():
    from engine.features import FeatureConfig, FeatureExtractor

    return FeatureExtractor(FeatureConfig(), device="cpu")


@pytest.fixture(scope="session")
def photo_sample() -> tuple[np.ndarray, np.ndarray]:
    from engine.synthetic import make_sample

    return make_sample(3, (192, 192), kind="photo")


@pytest.fixture(scope="session")
def photo_features(extractor, photo_sample):
    return extractor.extract(photo_sample[0])


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's real feature cache or panel settings from a test."""
    monkeypatch.setenv("FREESOLO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FREESOLO_NAPARI_SETTINGS", str(tmp_path / "settings" / "settings.json"))
