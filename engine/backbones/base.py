"""The interface every feature backbone offers to the rest of the engine.

Free Mask and the feature code only need named pyramid levels (``s4`` ... ``s32``,
``head``) with known channels and strides, plus each network's own input
normalisation; hiding the architecture behind this keeps them backbone-agnostic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["LEVELS", "Backbone", "BackboneError", "load_exact_state"]

#: All level names a backbone may offer, shallow to deep.
LEVELS: tuple[str, ...] = ("s4", "s8", "s16", "s32", "head", "tokens", "keys")


class BackboneError(RuntimeError):
    """A backbone cannot be built or loaded; the message names the file or name at fault."""


def load_exact_state(model: nn.Module, state, source: str, what: str) -> nn.Module:
    """Load ``state`` strictly, or raise one BackboneError listing a few missing/unexpected keys.

    ``what`` names the layout in the message (e.g. "EfficientNet", "ResNet (torchvision layout)").
    """
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)

    def _few(keys: list[str]) -> str:
        return f"{keys[:5]}{' ...' if len(keys) > 5 else ''} ({len(keys)})"

    if missing or unexpected:
        raise BackboneError(f"{source}: {what} keys do not match; missing {_few(missing)}, unexpected {_few(unexpected)}")
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        raise BackboneError(f"{source}: cannot load {what} weights: {exc}") from exc
    return model.eval()


class Backbone(nn.Module):
    """A frozen-architecture feature extractor with named output levels.

    Subclasses set ``name``, ``arch``, ``level_channels``, ``level_strides``,
    ``input_mean`` / ``input_std`` (per channel, for pixel values scaled to [0, 1])
    and implement ``forward``.
    """

    name: str
    arch: str
    level_channels: dict[str, int]
    level_strides: dict[str, int]
    input_mean: tuple[float, float, float]
    input_std: tuple[float, float, float]
    default_levels: tuple[str, ...] = ("s8", "s16", "s32")  # what Free Mask fuses unless told otherwise

    @property
    def device(self) -> torch.device:
        """Where the parameters live, so inputs can follow them."""
        return next(self.parameters()).device

    @property
    def levels(self) -> tuple[str, ...]:
        """Level names this backbone offers, shallow to deep."""
        return tuple(level for level in LEVELS if level in self.level_channels)

    def check_levels(self, levels: Sequence[str]) -> list[str]:
        """Validate requested level names early, listing the valid ones on error."""
        if isinstance(levels, str):
            levels = [levels]
        wanted = list(dict.fromkeys(levels))
        if not wanted:
            raise ValueError("no levels requested")
        unknown = [level for level in wanted if level not in self.level_channels]
        if unknown:
            raise ValueError(
                f"unknown level(s) {unknown} for backbone {self.name!r}; "
                f"available: {list(self.levels)}"
            )
        return wanted

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """Convert an ``HxWx3`` uint8 RGB image (or ``HxW`` grey) to a normalised (1,3,H,W) tensor.

        Each network was trained with its own normalisation, so it lives here and
        not in the caller.
        """
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got dtype {arr.dtype}")
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 RGB (or HxW grey) image, got shape {arr.shape}")
        x = torch.from_numpy(np.require(arr, requirements=["C", "W"])).to(self.device)
        x = x.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        mean = torch.tensor(self.input_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.input_std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, x: torch.Tensor, levels: Sequence[str]) -> dict[str, torch.Tensor]:
        """Return the requested levels, running the network only as deep as needed."""
        raise NotImplementedError

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (N, classes) where the checkpoint carries a classifier."""
        raise NotImplementedError(f"backbone {self.name!r} has no classifier")

    def extract(self, image: np.ndarray, levels: Sequence[str]) -> dict[str, torch.Tensor]:
        """Preprocess one image and return its levels without building an autograd graph."""
        with torch.no_grad():
            return self(self.preprocess(image), levels)
