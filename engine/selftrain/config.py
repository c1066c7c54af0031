"""Self-training settings, in one place (the engine, the CLI and the panel read their defaults here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.freemask.features import FeatureConfig
from engine.freemask.postprocess import FreeMaskParams
from engine.generators.merge import GeneratorConfig


@dataclass(frozen=True)
class SelfTrainConfig:
    """The self-training knobs (the CLI's and the panel's defaults come from here)."""

    rounds: int = 2  # SOLO rounds after Free Mask's round 0
    keep_thr: float = 0.3  # rounds >= 2: a prediction scoring at least this can be a pseudo-label
    max_keep: int = 20  # rounds >= 2: pseudo-labels per image
    coarse_top: int = 100  # round 1: at most N plausible coarse masks per image (0: all coarse masks)
    coarse_quantile: float = 0.6  # round 1: positives score at least this quantile of the folder's coarse scores
    positive_only: bool = False  # rounds >= 2: focal loss only at positive cells (the official 'pseudo' mode)
    ignore_min_score: float = float("inf")  # rounds >= 2: unselected predictions above this become ignore regions


@dataclass(frozen=True)
class CoarseSettings:
    """How round 0 makes Free Mask's coarse masks: the settings a user tuned (the panel's, or the
    command line's Free Mask options); the defaults are the engine's."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    params: FreeMaskParams = field(default_factory=FreeMaskParams)
    generators: GeneratorConfig = field(default_factory=GeneratorConfig)
    tile: int | None = None  # windows of this many input px (engine/generators/tiling.py); None: no tiling
    tile_overlap: int = 64
    cache_dir: Path | None = None  # the feature cache (None: the default one)
    use_cache: bool = True

    def record(self) -> dict:
        """The settings as plain values (``round_0/settings.json``: what made the coarse masks)."""
        out = asdict(self)
        out["cache_dir"] = None if self.cache_dir is None else str(self.cache_dir)
        return out
