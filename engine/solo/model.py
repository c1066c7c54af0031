"""Class-agnostic SOLOv2: backbone -> FPN -> grid head (objectness + dynamic kernels) + mask branch.

Every grid cell predicts whether an object is centred there and a 1x1 conv kernel; applying
that kernel to one shared stride-4 mask feature gives the cell's mask. FreeSOLO keeps this
architecture and only changes the losses, so the model knows nothing about coarse masks.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import Backbone
from .config import FPNConfig, HeadConfig, MaskBranchConfig, SoloConfig

__all__ = [
    "FPN",
    "MASK_STRIDE",
    "MaskBranch",
    "SoloHead",
    "SoloOutputs",
    "SoloV2",
    "coord_features",
    "dynamic_masks",
]

#: Stride of the unified mask feature relative to the network input.
MASK_STRIDE = 4


def _group_count(channels: int, max_groups: int = 32) -> int:
    """Largest group count <= 32 that divides ``channels`` (narrow CPU heads cannot use 32)."""
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def _conv_gn_relu(in_ch: int, out_ch: int, kernel: int = 3) -> nn.Sequential:
    """Conv (no bias: GroupNorm has one) + GroupNorm + ReLU, the SOLOv2 building block."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
        nn.GroupNorm(_group_count(out_ch), out_ch),
        nn.ReLU(inplace=True),
    )


def _xavier_fill(conv: nn.Conv2d) -> None:
    """Caffe2-style init used by detectron2's FPN: keeps activations well scaled without norm."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def coord_features(batch: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) x and y coordinates in [-1, 1] (CoordConv): lets kernels depend on position."""
    ys = torch.linspace(-1.0, 1.0, height, device=like.device, dtype=like.dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=like.device, dtype=like.dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy]).unsqueeze(0).expand(batch, -1, -1, -1)


def dynamic_masks(kernels: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
    """Mask logits (P, h, w) of ``kernels`` (P, D) applied as 1x1 convs to ``mask_features`` (D, h, w).

    A 1x1 conv with P output channels is exactly one (P, D) @ (D, h*w) matmul.
    """
    d, h, w = mask_features.shape
    if kernels.shape[-1] != d:
        raise ValueError(f"kernels have dim {kernels.shape[-1]} but mask features {d}")
    return (kernels @ mask_features.reshape(d, h * w)).reshape(kernels.shape[0], h, w)


@dataclass
class SoloOutputs:
    """Raw network outputs for a batch.

    ``categories[k]`` (B, 1, S, S) objectness logits and ``kernels[k]`` (B, D, S, S) dynamic
    kernels of grid level k; ``mask_features`` (B, D, H/4, W/4); ``strides[k]`` the level's
    nominal stride, carried along so post-processing needs no second config; ``embeddings[k]``
    (B, E, S, S) semantic embeddings, an empty list without the embedding branch.
    """

    categories: list[torch.Tensor]
    kernels: list[torch.Tensor]
    mask_features: torch.Tensor
    strides: tuple[int, ...]
    embeddings: list[torch.Tensor] = field(default_factory=list)


class FPN(nn.Module):
    """Feature pyramid: lateral 1x1, nearest top-down sum, 3x3 smoothing; optional extra P6.

    Outputs are ordered fine to coarse (P2 first when the finest input is stride 4).
    """

    def __init__(self, in_channels: list[int], cfg: FPNConfig) -> None:
        super().__init__()
        c = cfg.out_channels
        self.lateral = nn.ModuleList(nn.Conv2d(ch, c, 1) for ch in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in in_channels)
        self.extra_mode = cfg.extra
        self.extra = nn.Conv2d(c, c, 3, stride=2, padding=1) if cfg.extra == "conv" else None
        for conv in [*self.lateral, *self.output, *([self.extra] if self.extra is not None else [])]:
            _xavier_fill(conv)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Pyramid of ``len(feats)`` (+1 with an extra level) maps with ``out_channels`` each."""
        top = self.lateral[-1](feats[-1])
        outs = [self.output[-1](top)]
        for i in range(len(feats) - 2, -1, -1):
            lateral = self.lateral[i](feats[i])
            # Upsample to the lateral's own size: odd input sizes do not halve exactly.
            top = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
            outs.insert(0, self.output[i](top))
        if self.extra_mode == "maxpool":
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        elif self.extra is not None:
            outs.append(self.extra(outs[-1]))
        return outs


class SoloHead(nn.Module):
    """Per-level S x S grids: shared category and kernel towers over resized FPN features.

    The kernel branch sees normalised coordinates (CoordConv) because a cell's kernel must
    single out *its* object among identical-looking ones; the category branch does not. The
    optional embedding predictor shares the category tower (as in the official FreeSOLO code):
    what an object is, like whether it is one, does not depend on where it is.
    """

    def __init__(self, in_channels: int, cfg: HeadConfig) -> None:
        super().__init__()
        self.num_grids = tuple(cfg.num_grids)
        self.fpn_levels = tuple(cfg.fpn_levels)
        c = cfg.head_channels
        self.cate_tower = nn.Sequential(
            *(_conv_gn_relu(in_channels if i == 0 else c, c) for i in range(cfg.num_convs))
        )
        self.kernel_tower = nn.Sequential(
            *(_conv_gn_relu(in_channels + 2 if i == 0 else c, c) for i in range(cfg.num_convs))
        )
        self.cate_pred = nn.Conv2d(c, 1, 3, padding=1)
        self.kernel_pred = nn.Conv2d(c, cfg.kernel_dim, 3, padding=1)
        self.emb_pred = nn.Conv2d(c, cfg.embedding_dim, 3, padding=1) if cfg.embedding_dim else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Start every cell at objectness ~prior_prob so the focal loss is not swamped at step 0.
        nn.init.constant_(self.cate_pred.bias, -math.log((1.0 - cfg.prior_prob) / cfg.prior_prob))

    def forward(self, pyramid: list[torch.Tensor]) -> tuple[list[torch.Tensor], ...]:
        """Category logits (B, 1, S, S), kernels (B, D, S, S) and embeddings (B, E, S, S; none
        without the branch) for each grid level."""
        categories, kernels, embeddings = [], [], []
        for grid, level in zip(self.num_grids, self.fpn_levels, strict=True):
            feat = F.interpolate(pyramid[level], size=(grid, grid), mode="bilinear", align_corners=False)
            coords = coord_features(feat.shape[0], grid, grid, feat)
            kernels.append(self.kernel_pred(self.kernel_tower(torch.cat([feat, coords], dim=1))))
            tower = self.cate_tower(feat)
            categories.append(self.cate_pred(tower))
            if self.emb_pred is not None:
                embeddings.append(self.emb_pred(tower))
        return categories, kernels, embeddings


class MaskBranch(nn.Module):
    """SOLOv2 mask feature head: every FPN level is brought to stride 4 and summed.

    Level k gets k (conv, GN, ReLU, 2x upsample) stages; the coarsest level also gets
    coordinates so masks can be position-sensitive. A 1x1 conv then gives ``out_dim`` channels.
    """

    def __init__(self, in_channels: int, cfg: MaskBranchConfig) -> None:
        super().__init__()
        self.num_levels = len(cfg.fpn_levels)
        c = cfg.channels
        stages = []
        for level in range(self.num_levels):
            first_in = in_channels + (2 if level == self.num_levels - 1 else 0)
            convs = [_conv_gn_relu(first_in if i == 0 else c, c) for i in range(max(level, 1))]
            stages.append(nn.ModuleList(convs))
        self.stages = nn.ModuleList(stages)
        self.pred = _conv_gn_relu(c, cfg.out_dim, kernel=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        """(B, out_dim, H/4, W/4) from FPN outputs 0..k (0 at stride 4)."""
        sizes = [p.shape[-2:] for p in pyramid[: self.num_levels]]
        total = None
        for level, convs in enumerate(self.stages):
            x = pyramid[level]
            if level == self.num_levels - 1:
                x = torch.cat([x, coord_features(x.shape[0], x.shape[-2], x.shape[-1], x)], dim=1)
            for i, conv in enumerate(convs):
                x = conv(x)
                if level > 0:  # each stage climbs one level, to that level's exact size
                    x = F.interpolate(x, size=sizes[level - 1 - i], mode="bilinear", align_corners=False)
            total = x if total is None else total + x
        assert total is not None
        return self.pred(total)


class SoloV2(nn.Module):
    """Backbone + FPN + SoloHead + MaskBranch, configured by one ``SoloConfig``.

    With ``cfg.backbone.frozen`` the backbone runs without autograd and stays in eval
    mode even under ``model.train()``; ``forward_from_features`` then lets a trainer feed
    cached backbone features and skip the backbone entirely.
    """

    def __init__(self, cfg: SoloConfig, backbone: Backbone | None = None, device: str | torch.device = "cpu"):
        super().__init__()
        if backbone is None:
            from ..backbones.registry import build_backbone

            backbone = build_backbone(cfg.backbone.name, device)
        self.cfg = cfg
        self.levels = backbone.check_levels(cfg.backbone.levels)
        strides = [backbone.level_strides[level] for level in self.levels]
        if strides[0] != MASK_STRIDE:
            raise ValueError(f"the finest backbone level must have stride {MASK_STRIDE}, got {strides[0]}")
        self.backbone = backbone
        self.frozen = cfg.backbone.frozen
        # The config decides, whatever state the (possibly shared) backbone arrived in.
        self.backbone.requires_grad_(not self.frozen)
        if self.frozen:
            self.backbone.eval()
        self.fpn = FPN([backbone.level_channels[level] for level in self.levels], cfg.fpn)
        self.head = SoloHead(cfg.fpn.out_channels, cfg.head)
        self.mask_branch = MaskBranch(cfg.fpn.out_channels, cfg.mask)
        self.to(backbone.device)

    @property
    def strides(self) -> tuple[int, ...]:
        """Nominal stride per grid level (for the small-mask filter at inference)."""
        return tuple(self.cfg.head.strides)

    def train(self, mode: bool = True) -> SoloV2:
        """Like ``nn.Module.train`` but a frozen backbone keeps its BatchNorm statistics."""
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def backbone_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone levels for preprocessed ``images`` (B, 3, H, W); no graph when frozen."""
        ctx = torch.no_grad() if self.frozen else contextlib.nullcontext()
        with ctx:
            return self.backbone(images, self.levels)

    def forward(self, images: torch.Tensor) -> SoloOutputs:
        """Outputs for preprocessed images (B, 3, H, W)."""
        return self.forward_from_features(self.backbone_features(images))

    def forward_from_features(self, feats: Mapping[str, torch.Tensor]) -> SoloOutputs:
        """Outputs from backbone levels (e.g. cached), keyed by level name."""
        missing = [level for level in self.levels if level not in feats]
        if missing:
            raise KeyError(f"missing backbone levels {missing}; have {sorted(feats)}")
        pyramid = self.fpn([feats[level] for level in self.levels])
        categories, kernels, embeddings = self.head(pyramid)
        mask_features = self.mask_branch(pyramid)
        return SoloOutputs(categories, kernels, mask_features, self.strides, embeddings)
