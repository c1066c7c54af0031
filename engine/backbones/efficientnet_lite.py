"""EfficientNet-Lite in plain torch, shaped by whatever checkpoint it loads.

Lite variants drop squeeze-excitation, use ReLU6 and keep stem/head widths fixed,
which makes them cheap on CPU. Widths, depths and kernel sizes are read from the
state dict (``efficientnet_pytorch`` key layout), so Lite0 and Lite2 share this code;
only per-stage strides come from the fixed EfficientNet-B0 stage layout.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone, BackboneError, load_exact_state

__all__ = [
    "BlockSpec",
    "EfficientNetLite",
    "LiteConfig",
    "config_from_state_dict",
    "is_efficientnet_state",
]

#: Stride of the first block of each of the 7 EfficientNet-B0 stages.
STAGE_STRIDES: tuple[int, ...] = (1, 2, 2, 2, 1, 2, 1)
#: Level name -> index of the stage whose output it is (stem has stride 2).
_LEVEL_STAGE: dict[str, int] = {"s4": 1, "s8": 2, "s16": 4, "s32": 6}
_BN_EPS = 1e-3  # TensorFlow's default, which the weights were trained with
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.")


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) for one spatial axis."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding, computed from the input size.

    For stride 2 on even sizes TF pads one pixel more on the right/bottom; the
    weights expect that, so symmetric padding would shift every feature.
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = True
    ) -> None:
        # Stride 1 with an odd kernel pads symmetrically: let the conv do it (no copy).
        static = stride == 1 and kernel % 2 == 1
        pad = (kernel - 1) // 2 if static else 0
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=pad, groups=groups, bias=bias)
        self._static = static

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._static:
            top, bottom = _same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
            left, right = _same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


@dataclass(frozen=True)
class BlockSpec:
    """One inverted-residual (MBConv) block as read from the weights."""

    in_ch: int
    mid_ch: int
    out_ch: int
    kernel: int
    stride: int
    expand: bool


@dataclass(frozen=True)
class LiteConfig:
    """Whole-network shape: stem, blocks, last block index of each stage, head."""

    stem_ch: int
    blocks: tuple[BlockSpec, ...]
    stage_ends: tuple[int, ...]
    head_ch: int
    num_classes: int | None


class MBConvBlock(nn.Module):
    """Expand (1x1) -> depthwise (kxk) -> project (1x1), identity skip when shapes allow."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.spec = spec
        if spec.expand:
            self._expand_conv = nn.Conv2d(spec.in_ch, spec.mid_ch, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(spec.mid_ch, eps=_BN_EPS)
        self._depthwise_conv = SameConv2d(
            spec.mid_ch, spec.mid_ch, spec.kernel, stride=spec.stride, groups=spec.mid_ch, bias=False
        )
        self._bn1 = nn.BatchNorm2d(spec.mid_ch, eps=_BN_EPS)
        self._project_conv = nn.Conv2d(spec.mid_ch, spec.out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(spec.out_ch, eps=_BN_EPS)
        self.has_skip = spec.stride == 1 and spec.in_ch == spec.out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.spec.expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.has_skip else y


def is_efficientnet_state(state: Mapping[str, torch.Tensor]) -> bool:
    """True if the keys follow the efficientnet_pytorch layout."""
    return "_conv_stem.weight" in state and any(_BLOCK_KEY.match(k) for k in state)


def config_from_state_dict(state: Mapping[str, torch.Tensor], source: str = "state dict") -> LiteConfig:
    """Derive block widths, kernels and stage boundaries from the weights.

    A new stage starts wherever a block's output width changes (EfficientNet stage
    widths strictly increase); strides then follow the B0 layout by stage index.
    """
    try:
        stem_ch = int(state["_conv_stem.weight"].shape[0])
        indices = sorted({int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))})
        if indices != list(range(len(indices))) or not indices:
            raise BackboneError(f"{source}: block indices are not contiguous: {indices[:10]}")
        raw: list[tuple[int, int, int, int, bool]] = []
        prev = stem_ch
        for i in indices:
            dw = state[f"_blocks.{i}._depthwise_conv.weight"]
            proj = state[f"_blocks.{i}._project_conv.weight"]
            expand_key = f"_blocks.{i}._expand_conv.weight"
            expand = expand_key in state
            in_ch = int(state[expand_key].shape[1]) if expand else int(dw.shape[0])
            if in_ch != prev:
                raise BackboneError(f"{source}: block {i} takes {in_ch} channels but receives {prev}")
            if dw.shape[-1] != dw.shape[-2]:
                raise BackboneError(f"{source}: block {i} has a non-square kernel {tuple(dw.shape)}")
            raw.append((in_ch, int(dw.shape[0]), int(proj.shape[0]), int(dw.shape[-1]), expand))
            prev = int(proj.shape[0])
        head_ch = int(state["_conv_head.weight"].shape[0])
    except KeyError as exc:
        raise BackboneError(f"{source}: EfficientNet checkpoint lacks key {exc.args[0]!r}") from exc

    stage_ends: list[int] = []
    for i in range(1, len(raw)):
        if raw[i][2] != raw[i - 1][2]:
            stage_ends.append(i - 1)
    stage_ends.append(len(raw) - 1)
    if len(stage_ends) != len(STAGE_STRIDES):
        widths = [raw[e][2] for e in stage_ends]
        raise BackboneError(
            f"{source}: expected {len(STAGE_STRIDES)} EfficientNet stages, found "
            f"{len(stage_ends)} (output widths {widths})"
        )
    starts = {0, *(e + 1 for e in stage_ends[:-1])}
    stage_of_start = {start: n for n, start in enumerate(sorted(starts))}
    blocks = tuple(
        BlockSpec(
            in_ch=r[0], mid_ch=r[1], out_ch=r[2], kernel=r[3], expand=r[4],
            stride=STAGE_STRIDES[stage_of_start[i]] if i in starts else 1,
        )
        for i, r in enumerate(raw)
    )
    fc = state.get("_fc.weight")
    num_classes = int(fc.shape[0]) if fc is not None else None
    return LiteConfig(stem_ch, blocks, tuple(stage_ends), head_ch, num_classes)


class EfficientNetLite(Backbone):
    """EfficientNet-Lite feature extractor; ``classify`` works when ``_fc`` was loaded."""

    input_mean = (0.5, 0.5, 0.5)  # (x/255 - 0.5) / 0.5, as the TF-Lite models expect
    input_std = (0.5, 0.5, 0.5)

    def __init__(self, config: LiteConfig, name: str = "efficientnet-lite") -> None:
        super().__init__()
        self.name = name
        self.arch = f"efficientnet-lite ({len(config.blocks)} blocks)"
        self.config = config
        self._conv_stem = SameConv2d(3, config.stem_ch, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(config.stem_ch, eps=_BN_EPS)
        self._blocks = nn.ModuleList(MBConvBlock(spec) for spec in config.blocks)
        last = config.blocks[-1].out_ch
        self._conv_head = nn.Conv2d(last, config.head_ch, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(config.head_ch, eps=_BN_EPS)
        self._fc = nn.Linear(config.head_ch, config.num_classes) if config.num_classes else None

        self._level_block = {lvl: config.stage_ends[st] for lvl, st in _LEVEL_STAGE.items()}
        self.level_channels = {lvl: config.blocks[b].out_ch for lvl, b in self._level_block.items()}
        self.level_channels["head"] = config.head_ch
        strides: dict[str, int] = {}
        stride = 2
        for i, spec in enumerate(config.blocks):
            stride *= spec.stride
            for lvl, b in self._level_block.items():
                if b == i:
                    strides[lvl] = stride
        strides["head"] = strides["s32"]
        self.level_strides = strides
        self.eval()

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, torch.Tensor], name: str = "efficientnet-lite", source: str = "state dict"
    ) -> EfficientNetLite:
        """Build the matching network and load every key strictly."""
        model = cls(config_from_state_dict(state, source), name=name)
        return load_exact_state(model, state, source, "EfficientNet")

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor, levels: Sequence[str]) -> dict[str, torch.Tensor]:
        wanted = self.check_levels(levels)
        need_head = "head" in wanted
        last_block = len(self._blocks) - 1 if need_head else max(
            self._level_block[lvl] for lvl in wanted
        )
        at_block = {b: lvl for lvl, b in self._level_block.items() if lvl in wanted}
        out: dict[str, torch.Tensor] = {}
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for i in range(last_block + 1):
            x = self._blocks[i](x)
            if i in at_block:
                out[at_block[i]] = x
        if need_head:
            out["head"] = self._head(x)
        return {lvl: out[lvl] for lvl in wanted}

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        if self._fc is None:
            raise NotImplementedError(f"backbone {self.name!r} was loaded without a classifier (_fc)")
        head = self.forward(x, ["head"])["head"]
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(head, 1), 1))
