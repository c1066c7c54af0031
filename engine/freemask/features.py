"""The expensive half of Free Mask: one backbone pass per image, cached on disk.

``extract`` turns an image into a ``Features`` object: an L2-normalised key map at stride 8 of
the network input, fused from several backbone levels (one level alone carries too little
spatial detail or too little semantics; their fusion is what separates objects). Everything
Free Mask does afterwards (queries, τ, NMS, refinement) is cheap post-processing on it, so the
panel's sliders never re-run the network.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.freemask.cache import FeatureMemo
from engine.geometry import resize_image
from engine.io.atomic import atomic_save
from engine.freemask.input_scale import estimate_object_size, is_single_channel_like
from engine.freemask.stain import resolve_stain, stain_view

FEATURE_FORMAT_VERSION = 3  # 3: H&E detection also fits two dyes (the stain "auto" resolves to is cached)
DEFAULT_LEVELS = ("s8", "s16", "s32")
# Objects should span about this many input pixels for the stride-32 query grid to see them.
TARGET_OBJECT_SIZE = 96.0
MAX_AUTO_SCALE = 4.0


@dataclass(frozen=True)
class FeatureConfig:
    """How features are computed. Every field changes the cache key."""

    backbone: str = "efficientnet-lite0"
    levels: tuple[str, ...] = DEFAULT_LEVELS
    input_scale: float | None = None  # None = automatic from the estimated object size
    short_side: int | None = None  # resize so the short side has this length (official: 800)
    max_side: int = 1333  # the long side of the network input never exceeds this
    min_side: int = 64  # ... and the short side is never below this
    dim: int | None = 64  # PCA dimensions kept (None = all channels)
    stain: str = "auto"  # 'he': the network sees the hematoxylin channel; 'auto': when the image looks H&E

    def cache_key(self) -> str:
        """Hash of every field, the format version and, for a backbone given as a weights file, that
        file's size and modification time (replacing the weights at the same path starts afresh)."""
        payload = {**asdict(self), "v": FEATURE_FORMAT_VERSION}
        weights = Path(self.backbone).expanduser()
        if weights.suffix in (".pth", ".pt", ".ckpt", ".pkl") and weights.is_file():
            stat = weights.stat()
            payload["weights"] = [stat.st_size, stat.st_mtime_ns]
        return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Features:
    """A cached backbone pass: the key map plus what is needed to map it back to the image."""

    keys: torch.Tensor  # (D, h, w) float32, unit length along D
    image_size: tuple[int, int]  # (H, W) of the original image
    input_size: tuple[int, int]  # (H, W) fed to the network
    input_scale: float  # input / image size ratio actually used
    auto_scale: bool  # whether input_scale was chosen automatically
    object_size: float | None  # estimated object diameter in image pixels (auto mode)
    stain: str = "none"  # what the network saw: 'he' (hematoxylin channel) or 'none' (the image)
    config: FeatureConfig = field(default_factory=FeatureConfig)
    backbone_seconds: float = 0.0
    memo: FeatureMemo = field(default_factory=FeatureMemo, repr=False, compare=False)  # in-memory only

    @property
    def grid_size(self) -> tuple[int, int]:
        return int(self.keys.shape[1]), int(self.keys.shape[2])

    def to_bytes(self) -> bytes:
        meta = {f: getattr(self, f) for f in _META_FIELDS}
        meta["config"] = asdict(self.config)
        buf = io.BytesIO()
        torch.save({"keys": self.keys.half(), "meta": meta, "version": FEATURE_FORMAT_VERSION}, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Features":
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if obj.get("version") != FEATURE_FORMAT_VERSION:
            raise ValueError("feature cache entry has an old format")
        meta = dict(obj["meta"])
        cfg = meta.pop("config")
        cfg["levels"] = tuple(cfg["levels"])
        meta["image_size"] = tuple(meta["image_size"])
        meta["input_size"] = tuple(meta["input_size"])
        keys = F.normalize(obj["keys"].float(), dim=0)
        return cls(keys=keys, config=FeatureConfig(**cfg), **meta)


_META_FIELDS = ("image_size", "input_size", "input_scale", "auto_scale", "object_size", "stain", "backbone_seconds")


def choose_input_scale(image: np.ndarray, config: FeatureConfig,
                       object_size: float | None = None) -> tuple[float, bool, float | None]:
    """(scale, automatic?, estimated object size) for the network input.

    Automatic mode upsamples grayscale / single-colour images whose objects are small
    (e.g. 15–30 px nuclei) so that each object covers a few cells of the stride-32 query grid.
    Colour photos keep their size: there the blob-size estimate measures texture, not objects.
    ``object_size``: the estimate already made for this image (view), so it is not made twice.
    """
    h, w = image.shape[:2]
    base = config.short_side / min(h, w) if config.short_side else 1.0
    auto = config.input_scale is None
    size = None
    if auto:
        size = estimate_object_size(image) if object_size is None else float(object_size)
        factor = 1.0
        if is_single_channel_like(image):
            factor = float(np.clip(TARGET_OBJECT_SIZE / max(size * base, 1.0), 1.0, MAX_AUTO_SCALE))
    else:
        factor = float(config.input_scale)
    scale = base * factor
    if max(h, w) * scale > config.max_side:
        scale = config.max_side / max(h, w)
    if min(h, w) * scale < config.min_side:
        scale = config.min_side / min(h, w)
    return scale, auto, size


def fuse_levels(levels: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Resize each level (1, C, h, w) to ``size``, L2-normalise it, concatenate -> (C_total, h, w)."""
    parts = []
    for feat in levels:
        feat = feat.float()
        if feat.shape[-2:] != size:
            feat = F.interpolate(feat, size=size, mode="bilinear", align_corners=False)
        parts.append(F.normalize(feat, dim=1))
    return torch.cat(parts, dim=1)[0]


def pca_project(keys: torch.Tensor, dim: int | None) -> torch.Tensor:
    """Project (C, h, w) onto its top ``dim`` uncentred principal axes, then L2-normalise.

    The axes come from the second-moment matrix, not the covariance: centring would remove
    the direction every location shares, which measured here wrecks the contrast between
    object and background similarities (AP50 0.15 -> 0.03). Fewer dimensions make caching
    and the similarity matmul cheap. Falls back to all channels if the solver fails.
    """
    c, h, w = keys.shape
    x = keys.reshape(c, -1).T  # (N, C)
    if dim is not None and dim < c:
        moment = (x.T.double() @ x.double()) / max(x.shape[0], 1)
        try:
            _, vecs = torch.linalg.eigh(moment)
            x = x @ vecs[:, -dim:].flip(1).float()
        except RuntimeError:  # ill-conditioned: keep every channel rather than fail the image
            pass
    return F.normalize(x, dim=1).T.reshape(-1, h, w).contiguous()


class FeatureExtractor:
    """Holds one backbone on one device and turns images into ``Features``.

    ``backbone_calls`` counts network passes so callers (and tests) can prove that
    post-processing never re-runs the network.
    """

    def __init__(self, config: FeatureConfig | None = None, device: str | torch.device = "auto"):
        from engine.backbones import build_backbone
        from engine.runtime.device import resolve_device

        self.config = config or FeatureConfig()
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.backbone = build_backbone(self.config.backbone, device=self.device)
        self.backbone.eval()
        if self.config.levels == DEFAULT_LEVELS and not set(DEFAULT_LEVELS) <= set(self.backbone.level_channels):
            # e.g. a ViT (one token map): its own default levels, recorded in the config (and cache key)
            self.config = replace(self.config, levels=tuple(self.backbone.default_levels))
        self.backbone_calls = 0

    def extract(self, image: np.ndarray, config: FeatureConfig | None = None,
                object_size: float | None = None) -> Features:
        """Features of ``image``; ``config`` overrides this extractor's for one call (same backbone).
        ``object_size``: the automatic input scale's estimate, when the caller already made it."""
        cfg = config or self.config
        h, w = image.shape[:2]
        stain = resolve_stain(image, cfg.stain)
        image = stain_view(image, stain)
        scale, auto, obj_size = choose_input_scale(image, cfg, object_size)
        in_size = (max(1, round(h * scale)), max(1, round(w * scale)))
        t0 = time.perf_counter()
        resized = resize_image(image, in_size).to(torch.uint8)[0].permute(1, 2, 0).numpy()
        x = self.backbone.preprocess(resized).to(self.device)
        with torch.inference_mode():
            out = self.backbone(x, levels=list(cfg.levels))
        self.backbone_calls += 1
        key_size = (math.ceil(in_size[0] / 8), math.ceil(in_size[1] / 8))
        fused = fuse_levels([out[name] for name in cfg.levels], key_size)
        keys = pca_project(fused, cfg.dim).cpu()
        seconds = time.perf_counter() - t0
        return Features(
            keys=keys,
            image_size=(h, w),
            input_size=in_size,
            input_scale=scale,
            auto_scale=auto,
            object_size=obj_size,
            stain=stain,
            config=cfg,
            backbone_seconds=seconds,
        )


class FeatureCache:
    """On-disk cache: one file per (image content hash, feature config)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path_for(self, image_hash: str, config: FeatureConfig) -> Path:
        return self.root / f"{image_hash}-{config.cache_key()}.pt"

    def get(self, image_hash: str, config: FeatureConfig) -> Features | None:
        path = self.path_for(image_hash, config)
        if not path.is_file():
            return None
        try:
            return Features.from_bytes(path.read_bytes())
        except Exception:  # a damaged or outdated entry is recomputed, never fatal
            return None

    def put(self, image_hash: str, features: Features) -> Path:
        path = self.path_for(image_hash, features.config)
        data = features.to_bytes()
        return atomic_save(path, lambda tmp: Path(tmp).write_bytes(data), overwrite=True, backup=False)


def extract_cached(
    extractor: FeatureExtractor, image: np.ndarray, image_hash: str | None, cache: FeatureCache | None,
    config: FeatureConfig | None = None, object_size: float | None = None,
) -> tuple[Features, bool]:
    """Features from the cache when present (returns ``(features, True)``), else computed and stored
    (``object_size``: see ``FeatureExtractor.extract``)."""
    if cache is not None and image_hash:
        hit = cache.get(image_hash, config or extractor.config)
        if hit is not None:
            return hit, True
    feats = extractor.extract(image, config, object_size)
    if cache is not None and image_hash:
        cache.put(image_hash, feats)
    return feats, False
