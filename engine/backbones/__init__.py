"""Feature backbones with named pyramid levels (s4, s8, s16, s32, head).

Default: EfficientNet-Lite0 with ImageNet weights from a pip package (offline, CPU
friendly). Self-supervised ResNet-50/101 checkpoints (DenseCL, MoCo v2) load from
local files via ``build_backbone(path)``.
"""

from .base import LEVELS, Backbone, BackboneError
from .efficientnet_lite import EfficientNetLite
from .registry import (
    DEFAULT_BACKBONE,
    available_backbones,
    build_backbone,
    load_backbone_file,
    registered_backbones,
)
from .resnet import ResNet
from .weights import (
    ChecksumMismatchError,
    WeightsError,
    WeightsUnavailableError,
    default_cache_dir,
    fetch_weights,
    file_sha256,
    read_checkpoint,
    verify_sha256,
)

__all__ = [
    "DEFAULT_BACKBONE",
    "LEVELS",
    "Backbone",
    "BackboneError",
    "ChecksumMismatchError",
    "EfficientNetLite",
    "ResNet",
    "WeightsError",
    "WeightsUnavailableError",
    "available_backbones",
    "build_backbone",
    "default_cache_dir",
    "fetch_weights",
    "file_sha256",
    "load_backbone_file",
    "read_checkpoint",
    "registered_backbones",
    "verify_sha256",
]
