"""Self-training settings, in one place (the engine, the CLI and the panel read their defaults here)."""

from __future__ import annotations

from dataclasses import dataclass


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
