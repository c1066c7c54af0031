"""The self-training run folder, in one place (the engine writes it, the panel reads it).

RUN_DIR/round_0/coarse.json           Free Mask's coarse masks
RUN_DIR/round_0/settings.json         the Free Mask settings that made them (features, post-processing, generators)
RUN_DIR/round_K/train_masks.json      the masks round K trains on (K >= 1)
RUN_DIR/round_K/trusted.json          the trusted labels (corrections) round K used, if any
RUN_DIR/round_K/checkpoint.pt         the last checkpoint of round K's training
RUN_DIR/round_K/model.pt              round K's finished model
RUN_DIR/round_K/log.jsonl             one JSON line per training iteration
RUN_DIR/round_K/predictions.json      round K's predictions on the folder
RUN_DIR/round_K/eval_predictions.json predictions on the evaluation folder (with --gt)
RUN_DIR/round_K/seconds.txt           wall time of the round
RUN_DIR/round_K/next_to_fix.json      round K's model's uncertainty per image (``freesolo next-to-fix``)
RUN_DIR/corrections/round_K_trusted.json  the corrections the panel wrote for round K (round_K/trusted.json
                                      is the copy the round trained with)
RUN_DIR/summary.json                  one row per round
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.solo.checkpoint import CHECKPOINT, FINAL, LOG

ROUND_PREFIX = "round_"


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def round_dir(self, k: int) -> Path:
        return self.root / f"{ROUND_PREFIX}{k}"

    def coarse(self) -> Path:
        return self.round_dir(0) / "coarse.json"

    def coarse_settings(self) -> Path:
        return self.round_dir(0) / "settings.json"

    def masks(self, k: int) -> Path:
        """The masks round ``k`` produced: Free Mask's coarse masks for 0, predictions after."""
        return self.coarse() if k == 0 else self.predictions(k)

    def predictions(self, k: int) -> Path:
        return self.round_dir(k) / "predictions.json"

    def eval_predictions(self, k: int) -> Path:
        return self.round_dir(k) / "eval_predictions.json"

    def train_masks(self, k: int) -> Path:
        return self.round_dir(k) / "train_masks.json"

    def model(self, k: int) -> Path:
        return self.round_dir(k) / FINAL

    def trusted(self, k: int) -> Path:
        """The trusted labels round ``k`` trained with (a copy, so each round records its own)."""
        return self.round_dir(k) / "trusted.json"

    def checkpoint(self, k: int) -> Path:
        return self.round_dir(k) / CHECKPOINT

    def log(self, k: int) -> Path:
        return self.round_dir(k) / LOG

    def seconds(self, k: int) -> Path:
        return self.round_dir(k) / "seconds.txt"

    def ranking(self, k: int) -> Path:
        """Round ``k``'s model's uncertainty ranking of the images (most uncertain first)."""
        return self.round_dir(k) / "next_to_fix.json"

    def corrections(self, k: int) -> Path:
        """The trusted labels a front end wrote for round ``k`` (outside the round folder, which the
        engine owns; the round copies them into :meth:`trusted`)."""
        return self.root / "corrections" / f"round_{k}_trusted.json"

    def summary(self) -> Path:
        return self.root / "summary.json"

    def rounds_started(self) -> list[int]:
        """Round numbers with a folder, ascending."""
        if not self.root.is_dir():
            return []
        n = len(ROUND_PREFIX)
        return sorted(int(p.name[n:]) for p in self.root.glob(ROUND_PREFIX + "*") if p.name[n:].isdigit())

    def finished_rounds(self) -> list[int]:
        """Rounds whose masks exist (round 0 = Free Mask's coarse masks)."""
        return [k for k in self.rounds_started() if self.masks(k).is_file()]

    def unfinished_round(self) -> int | None:
        """The first started round without its masks (an interrupted run), or None."""
        done = set(self.finished_rounds())
        return next((k for k in self.rounds_started() if k not in done), None)

    def latest_model(self) -> int | None:
        """The newest round with a finished model (K >= 1), or None."""
        return max((k for k in self.finished_rounds() if k >= 1 and self.model(k).is_file()), default=None)

    def has_run(self) -> bool:
        """Whether the folder holds an earlier run (its round 0 was started)."""
        return self.round_dir(0).is_dir()
