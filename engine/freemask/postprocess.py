"""Free Mask post-processing: cached features in, ranked instance masks out.

The steps follow FreeSOLO's Free Mask (Wang et al., CVPR 2022), one module each:
queries = the key map pooled at pyramid scales (``queries``); cosine similarity of each query
with every key location, min-max normalised per query = soft masks; threshold τ; maskness =
mean soft value inside the mask (``soft_masks``); candidates, whole or split into parts, with
background filtered out (``candidates``); Matrix NMS with maskness as score (``engine/ops/nms``);
top-k, each kept mask upsampled inside its box, refined by an image-guided filter and
thresholded at τ again (``refine``).

Everything here is cheap relative to the backbone pass, which is why the panel can re-run it on
every slider move.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from engine.freemask.candidates import (
    Candidates,
    component_candidates,
    drop_background_candidates,
    whole_mask_candidates,
)
from engine.freemask.features import Features
from engine.freemask.queries import Queries
from engine.freemask.refine import (
    auto_refine_radius,
    full_resolution_mask,
    guide_stats,
    mask_pool,
    passes_filters,
)
from engine.ops.masks import maskness
from engine.geometry import cell_centre
from engine.freemask.soft_masks import ranked_soft_masks, soft_masks
from engine.ops.guided_filter import GuideStats, upsample_crop
from engine.ops.nms import matrix_nms
from engine.structures import InstanceMask

# Backbone padding makes the outermost key cells look unlike their neighbours, so "touching
# the image side" means reaching within this many network-input pixels of it.
BORDER_INPUT_PX = 16


def parse_scales(text: str) -> tuple[float, ...]:
    """'1, 0.5;0.25' -> (1.0, 0.5, 0.25): pyramid scales, unique, largest first; ValueError names a bad entry."""
    values = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            values.append(float(part))
        except ValueError:
            raise ValueError(f"pyramid scale {part!r} is not a number") from None
    if not values:
        raise ValueError("choose at least one pyramid scale")
    return tuple(sorted(set(values), reverse=True))


@dataclass(frozen=True)
class FreeMaskParams:
    """Every knob of the post-processing (none of them re-runs the backbone)."""

    tau: float = 0.65  # soft-mask threshold (official 0.5; measured best here, see README)
    scales: tuple[float, ...] = (1.0, 0.5, 0.25)  # query pyramid, relative to the query grid
    query_stride: int | None = 32  # input pixels per query cell at scale 1.0; None: sized to the image
    pre_nms_top: int = 100  # candidates kept by maskness before Matrix NMS (cost control; at least 2×top-k)
    score_stride: int = 16  # key grid (input px per cell) on which candidates are ranked: 8 or 16
    top_k: int | None = None  # masks per image; None = 20, or 100 for auto-upscaled small objects
    nms_kernel: Literal["gaussian", "linear"] = "gaussian"
    nms_sigma: float = 2.0
    min_score: float = 0.0  # decayed maskness threshold (official script: 0.7)
    min_area: int = 16  # px at image resolution
    max_area_frac: float = 1.0  # drop masks covering more of the image than this
    max_border_sides: int = 2  # drop masks reaching more image sides than this (background)
    split_components: bool = True  # one instance per connected part (semantic masks -> objects)
    refine: bool = True  # image-guided boundary refinement
    refine_radius: int | None = None  # px at image resolution; None = 12 / input scale
    refine_eps: float = 1e-3
    center_y_min: float | None = None  # official COCO filter: mass centre y > 0.2·H
    max_box_width: float | None = None  # official COCO filter: box width < 0.95·W

    def validated(self) -> "FreeMaskParams":
        """Return self, or raise ValueError naming the first bad field."""
        if not 0.0 < self.tau < 1.0:
            raise ValueError(f"tau must be in (0, 1), got {self.tau}")
        if not self.scales or any(not 0.0 < s <= 4.0 for s in self.scales):
            raise ValueError(f"scales must be non-empty values in (0, 4], got {self.scales}")
        if self.query_stride is not None and self.query_stride < 8:
            raise ValueError(f"query_stride must be at least 8 (the key grid) or None (sized to the image), got {self.query_stride}")
        if self.score_stride not in (8, 16, 32):
            raise ValueError(f"score_stride must be 8, 16 or 32, got {self.score_stride}")
        if (self.top_k is not None and self.top_k < 1) or self.pre_nms_top < 1:
            raise ValueError("top_k and pre_nms_top must be at least 1")
        if self.nms_kernel not in ("gaussian", "linear"):
            raise ValueError(f"nms_kernel must be 'gaussian' or 'linear', got {self.nms_kernel!r}")
        if self.nms_sigma <= 0 or self.refine_eps <= 0:
            raise ValueError("nms_sigma and refine_eps must be positive")
        if self.refine_radius is not None and self.refine_radius < 1:
            raise ValueError("refine_radius must be at least 1 px")
        if self.min_area < 0 or not 0.0 < self.max_area_frac <= 1.0:
            raise ValueError("min_area must be >= 0 and max_area_frac in (0, 1]")
        return self

    def with_updates(self, **changes) -> "FreeMaskParams":
        return replace(self, **changes).validated()


@dataclass
class FreeMaskResult:
    """Kept instances plus what the panel needs for visual debugging."""

    instances: list[InstanceMask]
    candidate_maskness: np.ndarray  # maskness of every candidate (histogram of τ's effect)
    n_queries: int
    refine_radius: int
    top_k: int = 20
    generators: tuple[str, ...] = ("freemask",)  # what made the masks (engine/generators/merge.py)
    auto_generators: tuple[str, ...] = ()  # those of them added automatically (classical on microscopy)
    classical_methods: tuple[str, ...] = ()  # the classical methods chosen by image kind (when on 'auto')
    freemask_weight: float | None = None  # the weight Free Mask's merge scores got beside classical proposals
    _soft: torch.Tensor = field(repr=False, default_factory=lambda: torch.zeros(0))
    _features: Features | None = field(repr=False, default=None)

    def soft_mask(self, index: int) -> np.ndarray:
        """Full-resolution soft mask (before refinement) of kept instance ``index``, on demand."""
        assert self._features is not None
        h, w = self._features.image_size
        src = self._soft[index]  # one soft row per kept instance, in the same order
        return upsample_crop(src, (h, w), (0, h, 0, w)).numpy()


def auto_top_k(features: Features) -> int:
    """20 masks per image (the paper's), 100 where the automatic input scale found small objects.

    Images that needed upsampling (nuclei and the like) typically hold dozens of objects; on
    the project's nuclei set top-100 raised AP50 from 0.50 to 0.64.
    """
    return 100 if features.auto_scale and features.input_scale > 1.0 else 20


@dataclass
class Ranked:
    """Candidates after Matrix NMS: ``order`` indexes ``cands`` from the best decayed score down."""

    queries: Queries
    cands: Candidates
    decayed: torch.Tensor
    order: torch.Tensor
    candidate_maskness: np.ndarray
    grid: tuple[int, int]  # the ranking grid


def rank_candidates(features: Features, p: FreeMaskParams, top_k: int) -> Ranked:
    """Queries, soft masks, τ, maskness, candidates, background filter and Matrix NMS."""
    queries, soft, cgrid = ranked_soft_masks(features, p)
    binary, area, mness = maskness(soft, p.tau)
    pre_nms = max(p.pre_nms_top, 2 * top_k)  # images with many small objects need more candidates
    if p.split_components:
        cands = component_candidates(soft, binary, area, mness, cgrid, pre_nms)
    else:
        cands = whole_mask_candidates(soft, binary, area, mness, pre_nms)
    cands = drop_background_candidates(cands, cgrid, p, border_cells=max(1, -(-BORDER_INPUT_PX // p.score_stride)))
    decayed = matrix_nms(cands.binary.float(), cands.maskness, kernel=p.nms_kernel, sigma=p.nms_sigma)
    order = torch.argsort(decayed, descending=True)
    order = order[decayed[order] >= p.min_score]
    return Ranked(queries, cands, decayed, order, mness[area > 1].numpy(), cgrid)


class Refiner:
    """Full-resolution masks of a shortlist of ranked candidates (the best ``2 × top_k``, so spare
    ones replace candidates the filters drop)."""

    def __init__(self, features: Features, ranked: Ranked, p: FreeMaskParams, image: np.ndarray | None, top_k: int,
                 source: str = "freemask"):
        self.features, self.ranked, self.p, self.source = features, ranked, p, source
        self.grid = features.grid_size
        self.radius = p.refine_radius or auto_refine_radius(features)
        self.guide: GuideStats | None = None
        if p.refine and image is not None:
            self.guide = guide_stats(features, image, self.radius, p.refine_eps)
            self.guide.prepare()  # shared read-only arrays, made once before any thread reads them
        self.margin = round(BORDER_INPUT_PX / max(features.input_scale, 1e-6))
        self.shortlist = ranked.order[: 2 * top_k]
        vectors = ranked.queries.vectors[ranked.cands.query[self.shortlist]]
        self.fine = self._gated(soft_masks(vectors, features.keys))  # kept masks on the fine grid, one product
        self.embeddings = np.round(vectors.numpy(), 4).tolist()

    def _gated(self, fine: torch.Tensor) -> torch.Tensor:
        """With ``split_components``, each row keeps its own part only (grown by one ranking cell)."""
        if not self.p.split_components or len(self.shortlist) == 0:
            return fine
        parts = self.ranked.cands.binary[self.shortlist].reshape(-1, 1, *self.ranked.grid).float()
        gates = F.interpolate(F.max_pool2d(parts, 3, stride=1, padding=1), size=self.grid, mode="nearest")
        return fine * gates.reshape(len(self.shortlist), -1)

    def mask(self, row: int):
        """The mask crop and box of shortlist row ``row``, or None if it is empty or filtered out."""
        region = self.fine[row]
        fine_binary = region >= self.p.tau
        if not bool(fine_binary.any()):
            return None
        H, W = self.features.image_size
        out = full_resolution_mask(region, fine_binary, self.grid, (H, W), self.p, self.radius, self.guide)
        if out is None or not passes_filters(*out, self.p, (H, W), margin=self.margin):
            return None
        return out

    def instance(self, row: int, crop: np.ndarray, box: tuple[int, int, int, int]) -> InstanceMask:
        H, W = self.features.image_size
        ci = int(self.shortlist[row])
        qi = int(self.ranked.cands.query[ci])
        qy, qx = self.ranked.queries.yx[qi].tolist()
        return InstanceMask(
            crop,
            score=float(self.ranked.decayed[ci]),
            maskness=float(self.ranked.cands.maskness[ci]),
            source=self.source,
            box=box,
            shape=(H, W),
            extra={
                "scale": float(self.ranked.queries.scale[qi]),
                "query_yx": [round(cell_centre(qy, self.grid[0], H), 1), round(cell_centre(qx, self.grid[1], W), 1)],
                "embedding": self.embeddings[row],
            },
        )

    def first(self, top_k: int, threads: int | None) -> list[tuple[int, InstanceMask]]:
        """The first ``top_k`` shortlist rows that survive, as (row, instance), in rank order.

        Each round refines exactly as many rows as masks are still missing, so the work (and the
        result) is that of a one-by-one loop stopping at the ``top_k``-th mask, whatever ``threads``.
        """
        found: list[tuple[int, InstanceMask]] = []
        n = len(self.shortlist)
        with mask_pool(threads, n) as run:
            done = 0
            while done < n and len(found) < top_k:
                batch = list(range(done, min(n, done + top_k - len(found))))
                done = batch[-1] + 1
                found += [(row, self.instance(row, *out)) for row, out in zip(batch, run(self.mask, batch))
                          if out is not None]
        return found


def postprocess(
    features: Features, params: FreeMaskParams | None = None, image: np.ndarray | None = None,
    threads: int | None = None,
) -> FreeMaskResult:
    """Run Free Mask on cached ``features``; ``image`` (H, W, 3 uint8) guides the refinement.

    Without ``image`` the masks are the upsampled soft masks thresholded at τ (no refinement).
    ``threads``: how many masks are refined at once (default: the usable cores, at most 4);
    the result does not depend on it.
    """
    p = (params or FreeMaskParams()).validated()
    if image is not None and tuple(image.shape[:2]) != tuple(features.image_size):
        raise ValueError(f"image is {tuple(image.shape[:2])} but features were computed for {features.image_size}")
    top_k = p.top_k or auto_top_k(features)
    ranked = rank_candidates(features, p, top_k)
    refiner = Refiner(features, ranked, p, image, top_k)
    found = refiner.first(top_k, threads)
    grid = features.grid_size
    return FreeMaskResult(
        top_k=top_k,
        instances=[inst for _row, inst in found],
        candidate_maskness=ranked.candidate_maskness,
        n_queries=int(ranked.queries.vectors.shape[0]),
        refine_radius=int(refiner.radius),
        _soft=torch.stack([refiner.fine[row].reshape(grid) for row, _ in found]) if found else torch.zeros(0, *grid),
        _features=features,
    )
