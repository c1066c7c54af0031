"""Bottleneck ResNets (50/101/...) in plain torch, in the torchvision key layout.

FreeSOLO's paper uses DenseCL-pretrained ResNets; users bring such self-supervised
checkpoints (DenseCL, MoCo v2, DINO) as local files. Depth is read from the keys,
projection heads are ignored, and any other key mismatch fails loudly, because a
silently half-loaded backbone yields plausible-looking but useless masks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone, BackboneError, load_exact_state

__all__ = ["Bottleneck", "ResNet", "is_resnet_state", "resnet_layout"]

_EXPANSION = 4
_WIDTHS: tuple[int, ...] = (64, 128, 256, 512)
_LEVEL_LAYER: dict[str, int] = {"s4": 1, "s8": 2, "s16": 3, "s32": 4}
#: Known depths by blocks per layer; the paper's models are 50 and 101.
KNOWN_DEPTHS: dict[tuple[int, int, int, int], str] = {
    (3, 4, 6, 3): "resnet50",
    (3, 4, 23, 3): "resnet101",
    (3, 8, 36, 3): "resnet152",
}
#: Classifier kept only when it is an ImageNet head; other ``fc.*`` are projection heads.
_IMAGENET_CLASSES = 1000
_IGNORED_PREFIXES: tuple[str, ...] = ("neck.", "head.")
_LAYER_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.")


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride, as torchvision) -> 1x1 expand, plus shortcut."""

    def __init__(self, in_ch: int, width: int, stride: int, downsample: bool) -> None:
        super().__init__()
        out_ch = width * _EXPANSION
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
            if downsample
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = self.downsample(x) if self.downsample is not None else x
        return F.relu(y + shortcut)


def is_resnet_state(state: Mapping[str, torch.Tensor]) -> bool:
    """True if the keys follow the torchvision ResNet layout."""
    return "conv1.weight" in state and "layer1.0.conv1.weight" in state


def resnet_layout(state: Mapping[str, torch.Tensor], source: str = "state dict") -> tuple[int, int, int, int]:
    """Blocks per layer, counted from the keys (layer3: 6 -> ResNet-50, 23 -> ResNet-101)."""
    counts = [0, 0, 0, 0]
    for key in state:
        if m := _LAYER_BLOCK.match(key):
            layer, block = int(m.group(1)), int(m.group(2))
            counts[layer - 1] = max(counts[layer - 1], block + 1)
    if min(counts) == 0:
        raise BackboneError(f"{source}: ResNet checkpoint lacks layers (blocks per layer {counts})")
    if "layer1.0.conv3.weight" not in state:
        raise BackboneError(
            f"{source}: only Bottleneck ResNets (50/101/152) are supported; this one has "
            "BasicBlocks (ResNet-18/34)"
        )
    return counts[0], counts[1], counts[2], counts[3]


class ResNet(Backbone):
    """Bottleneck ResNet with levels s4..s32 (layer1..layer4); ``head`` aliases ``s32``."""

    input_mean = (0.485, 0.456, 0.406)  # ImageNet statistics, used by DenseCL / MoCo
    input_std = (0.229, 0.224, 0.225)

    def __init__(
        self, blocks: Sequence[int] = (3, 4, 6, 3), num_classes: int | None = None, name: str | None = None
    ) -> None:
        super().__init__()
        blocks = tuple(int(b) for b in blocks)
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"expected 4 positive block counts, got {blocks}")
        self.arch = KNOWN_DEPTHS.get(blocks, f"resnet-bottleneck{list(blocks)}")  # type: ignore[arg-type]
        self.name = name or self.arch
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_ch = 64
        for i, (count, width) in enumerate(zip(blocks, _WIDTHS), start=1):
            stride = 1 if i == 1 else 2
            layer = [Bottleneck(in_ch, width, stride, downsample=True)]
            in_ch = width * _EXPANSION
            layer += [Bottleneck(in_ch, width, 1, downsample=False) for _ in range(count - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layer))
        self.fc = nn.Linear(in_ch, num_classes) if num_classes else None
        self.level_channels = {lvl: _WIDTHS[i - 1] * _EXPANSION for lvl, i in _LEVEL_LAYER.items()}
        self.level_channels["head"] = self.level_channels["s32"]
        self.level_strides = {"s4": 4, "s8": 8, "s16": 16, "s32": 32, "head": 32}
        self.eval()

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, torch.Tensor], name: str | None = None, source: str = "state dict"
    ) -> ResNet:
        """Build a ResNet of the checkpoint's depth and load it strictly (heads ignored)."""
        blocks = resnet_layout(state, source)
        kept = {k: v for k, v in state.items() if not k.startswith(_IGNORED_PREFIXES)}
        fc_keys = {k for k in kept if k.startswith("fc.")}
        final_ch = _WIDTHS[-1] * _EXPANSION
        weight, bias = kept.get("fc.weight"), kept.get("fc.bias")
        is_classifier = (
            fc_keys == {"fc.weight", "fc.bias"}
            and weight is not None
            and bias is not None
            and tuple(weight.shape) == (_IMAGENET_CLASSES, final_ch)
            and tuple(bias.shape) == (_IMAGENET_CLASSES,)
        )
        if not is_classifier:
            kept = {k: v for k, v in kept.items() if k not in fc_keys}
        model = cls(blocks, num_classes=_IMAGENET_CLASSES if is_classifier else None, name=name)
        return load_exact_state(model, kept, source, "ResNet (torchvision layout)")

    def forward(self, x: torch.Tensor, levels: Sequence[str]) -> dict[str, torch.Tensor]:
        wanted = self.check_levels(levels)
        deepest = max(_LEVEL_LAYER["s32" if lvl == "head" else lvl] for lvl in wanted)
        feats: dict[int, torch.Tensor] = {}
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        for i in range(1, deepest + 1):
            x = getattr(self, f"layer{i}")(x)
            feats[i] = x
        return {lvl: feats[_LEVEL_LAYER["s32" if lvl == "head" else lvl]] for lvl in wanted}

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        if self.fc is None:
            raise NotImplementedError(
                f"backbone {self.name!r} has no ImageNet classifier (self-supervised checkpoints have none)"
            )
        feat = self.forward(x, ["s32"])["s32"]
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(feat, 1), 1))
