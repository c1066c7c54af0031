"""Typed configuration of the class-agnostic SOLOv2 used by FreeSOLO.

One frozen dataclass per component keeps every shape decision explicit and lets a
checkpoint store the exact architecture next to its weights (``to_dict`` / ``from_dict``),
so a saved model can be rebuilt without guessing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

__all__ = [
    "BackboneConfig",
    "FPNConfig",
    "HeadConfig",
    "InferenceConfig",
    "MaskBranchConfig",
    "SoloConfig",
]

ExtraLevel = Literal["maxpool", "conv", "none"]
NmsKernel = Literal["gaussian", "linear"]


@dataclass(frozen=True)
class BackboneConfig:
    """Which backbone feeds the FPN, which of its levels, and whether it is trained.

    A frozen backbone gets no gradients and keeps BatchNorm in eval mode, which lets a
    CPU trainer skip its backward pass and even cache its features per image.
    """

    name: str = "efficientnet-lite0"
    levels: tuple[str, ...] = ("s4", "s8", "s16", "s32")
    frozen: bool = True


@dataclass(frozen=True)
class FPNConfig:
    """Feature pyramid width and how the extra coarsest level (P6) is made, if at all.

    ``extra="maxpool"`` (SOLOv2 / detectron2) or ``"conv"`` (stride-2 3x3 conv) adds one
    output level on top of the backbone's levels; ``"none"`` adds nothing.
    """

    out_channels: int = 256
    extra: ExtraLevel = "maxpool"


@dataclass(frozen=True)
class HeadConfig:
    """Grid head: one S x S grid per used FPN level, predicting objectness and dynamic kernels.

    ``fpn_levels[k]`` is the FPN output (0 = P2, stride 4) whose feature is resized to
    ``num_grids[k]``. ``strides[k]`` is SOLOv2's nominal stride of that level, used at
    inference to drop masks smaller than it (official values: 8, 8, 16, 32, 32, since P2
    is halved and P6 upsampled to P5 in the official code). ``scale_ranges[k]`` is the
    range of sqrt(box area) in input pixels assigned to that level during training.
    ``embedding_dim`` > 0 adds FreeSOLO's semantic embedding branch: every cell also predicts a
    vector that learns the direction of its object's Free Mask query embedding.
    """

    num_grids: tuple[int, ...] = (40, 36, 24, 16, 12)
    fpn_levels: tuple[int, ...] = (0, 1, 2, 3, 4)
    strides: tuple[int, ...] = (8, 8, 16, 32, 32)
    scale_ranges: tuple[tuple[float, float], ...] = (
        (1.0, 96.0),
        (48.0, 192.0),
        (96.0, 384.0),
        (192.0, 768.0),
        (384.0, 2048.0),
    )
    head_channels: int = 256
    num_convs: int = 4
    kernel_dim: int = 256
    prior_prob: float = 0.01
    embedding_dim: int = 0  # 0: no embedding branch (set by training from the masks' embeddings)

    def __post_init__(self) -> None:
        n = len(self.num_grids)
        sizes = {
            "fpn_levels": len(self.fpn_levels),
            "strides": len(self.strides),
            "scale_ranges": len(self.scale_ranges),
        }
        wrong = {k: v for k, v in sizes.items() if v != n}
        if wrong:
            raise ValueError(f"HeadConfig: {len(self.num_grids)} grids but lengths {wrong}")
        if not 0.0 < self.prior_prob < 1.0:
            raise ValueError(f"prior_prob must be in (0, 1), got {self.prior_prob}")
        if self.embedding_dim < 0:
            raise ValueError(f"embedding_dim must be >= 0, got {self.embedding_dim}")


@dataclass(frozen=True)
class MaskBranchConfig:
    """Unified stride-4 mask feature built from P2..P5 (SOLOv2's mask feature head).

    ``out_dim`` must equal the head's ``kernel_dim``: each dynamic kernel is a 1x1 conv
    over this feature.
    """

    channels: int = 128
    out_dim: int = 256
    fpn_levels: tuple[int, ...] = (0, 1, 2, 3)


@dataclass(frozen=True)
class InferenceConfig:
    """Thresholds of SOLOv2 inference (official FreeSOLO values by default)."""

    score_thr: float = 0.1
    mask_thr: float = 0.5
    nms_pre: int = 500
    update_thr: float = 0.05
    max_per_image: int = 100
    nms_kernel: NmsKernel = "gaussian"
    nms_sigma: float = 2.0


def _tuples(value: Any) -> Any:
    """JSON turns tuples into lists; turn (nested) lists back so configs compare equal."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _build(cls: type, data: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    return cls(**{k: _tuples(v) for k, v in data.items()})


@dataclass(frozen=True)
class SoloConfig:
    """Everything that fixes the network's shape plus its inference thresholds."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    mask: MaskBranchConfig = field(default_factory=MaskBranchConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        if self.mask.out_dim != self.head.kernel_dim:
            raise ValueError(
                f"mask.out_dim ({self.mask.out_dim}) must equal head.kernel_dim ({self.head.kernel_dim})"
            )
        n_fpn = self.num_fpn_levels
        used = [*self.head.fpn_levels, *self.mask.fpn_levels]
        if any(not 0 <= level < n_fpn for level in used):
            raise ValueError(f"FPN levels {used} out of range: the FPN has {n_fpn} outputs")
        if tuple(self.mask.fpn_levels) != tuple(range(len(self.mask.fpn_levels))):
            raise ValueError("mask.fpn_levels must be 0..k (the stride-4 level first, consecutive)")

    @property
    def num_fpn_levels(self) -> int:
        """Backbone levels plus the optional extra P6."""
        return len(self.backbone.levels) + (self.fpn.extra != "none")

    @classmethod
    def paper(cls) -> SoloConfig:
        """The official FreeSOLO / SOLOv2 shape (P2..P6, 256-d kernels)."""
        return cls()

    @classmethod
    def cpu_small(cls) -> SoloConfig:
        """A narrow 3-level variant sized for CPU training on a frozen Lite0 backbone."""
        return cls(
            fpn=FPNConfig(out_channels=64, extra="none"),
            head=HeadConfig(
                num_grids=(24, 16, 12),
                fpn_levels=(1, 2, 3),
                strides=(8, 16, 32),
                scale_ranges=((1.0, 96.0), (48.0, 192.0), (96.0, 2048.0)),
                head_channels=64,
                num_convs=2,
                kernel_dim=64,
            ),
            mask=MaskBranchConfig(channels=64, out_dim=64),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists on JSON round trips; from_dict undoes it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SoloConfig:
        """Rebuild from ``to_dict`` output; unknown keys are errors so typos are not silently dropped."""
        parts = {
            "backbone": BackboneConfig,
            "fpn": FPNConfig,
            "head": HeadConfig,
            "mask": MaskBranchConfig,
            "inference": InferenceConfig,
        }
        unknown = set(data) - set(parts)
        if unknown:
            raise ValueError(f"SoloConfig: unknown keys {sorted(unknown)}")
        return cls(**{k: _build(c, dict(data[k])) for k, c in parts.items() if k in data})


@dataclass(frozen=True)
class TrainConfig:
    """How the student is trained (saved in every checkpoint as ``train_config``)."""

    iters: int = 1500  # 300 left the student far below its coarse masks; 1500 beat them (see README)
    batch: int = 2
    size: int = 320  # training images are letterboxed to size×size
    object_px: float = 0.0  # > 0: the run's scale makes the median training mask this wide (engine/solo/tiles.py)
    scale: float = 0.0  # network px per image px, resolved from object_px at the start (0: letterbox whole images)
    optimizer: Literal["adamw", "sgd"] = "adamw"  # SGD (paper: lr 0.001, batch 16) barely moved at batch 2 here
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.05
    mask_loss: Literal["weak", "full"] = "full"  # measured better here than the paper's "weak" (see README)
    alpha: float = 0.1  # weight of the average-projection Dice
    mask_weight: float = 3.0
    focal_weight: float = 1.0
    pairwise_weight: float = 1.0
    pairwise_threshold: float = 0.3
    pairwise_warmup: int = 100
    copy_paste: float = 0.5  # chance that a batch image is the strong view (objects of another image pasted in)
    ignore_weight: float = 0.1  # category-loss weight of negative cells inside unselected candidates
    max_mask_positives: int = 64  # per batch, sampled at random for the mask losses (0 = all)
    positive_only_focal: bool = False  # self-training: no push to background for unlabeled objects
    checkpoint_every: int = 100
    seed: int = 0
    # > 0: the semantic embedding branch learns Free Mask's query embeddings with this weight
    # (the official code uses 4); masks without an embedding (classical, trusted) take no part
    embedding_weight: float = 0.0
    # images with trusted (corrected) labels are sampled this many times as often; measured on real
    # nuclei (docs/measurements.md): 1 / 3 / 10 gave AP50 0.372 / 0.316 / 0.220, so no up-weighting
    trusted_weight: float = 1.0
    amp: bool = True  # mixed precision on CUDA (see engine/solo/amp.py); float32 on the CPU
    amp_dtype: Literal["float16", "bfloat16"] = "float16"  # bfloat16 also autocasts on the CPU
