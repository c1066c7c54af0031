"""What was chosen automatically for one image: the values the engine used, in one line.

Free Mask decides several things per image when they are left on automatic: the input scale
(``engine/freemask/input_scale.py``, from the estimated object size), the view the network sees
(``engine/freemask/stain.py``: the hematoxylin channel of H&E images), the query grid
(``FreeMaskParams.query_stride`` None: sized to the key map), top-k, the refinement radius and
the generators added on microscopy (``engine/generators/merge.py``, ``chosen``), the classical
methods chosen by image kind (``classical_methods``) and the weight Free Mask's merge scores got
beside them on microscopy;
a tiled run (``engine/generators/tiling.py``) also chooses its windows. ``automatic_choices``
reads them back from what a run produced (its ``Features``, parameters, result and tile plan),
never recomputes them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from engine.freemask.features import Features
from engine.freemask.postprocess import FreeMaskParams, FreeMaskResult
from engine.freemask.queries import query_grid
from engine.generators.tiling import TilePlan

STAIN_NAMES = {"he": "hematoxylin", "none": "none"}


@dataclass(frozen=True)
class AutoChoices:
    input_scale: float  # network input / image pixels
    scale_auto: bool
    object_size: float | None  # estimated object diameter in image px (automatic scale only)
    stain: str  # 'he' or 'none': what the network saw
    stain_auto: bool
    query_grid: tuple[int, int]  # (rows, columns) of queries at pyramid scale 1
    query_stride: int | None  # input px per query cell as set; None: the grid was sized to the image
    tiles: tuple[int, int] | None  # (rows, columns) of windows; None: the whole image at once
    top_k: int | None = None  # masks kept, when chosen automatically
    refine_radius: int | None = None  # px, when chosen automatically
    auto_generators: tuple[str, ...] = ()  # generators added for this image (classical on microscopy)
    classical_methods: tuple[str, ...] = ()  # the classical methods chosen by image kind ('auto')
    freemask_weight: float | None = None  # Free Mask's merge weight beside classical proposals (microscopy)

    def text(self) -> str:
        """'used: input scale ×1.26 (auto, objects ≈40 px) · stain: hematoxylin (auto) · query grid 12×12
        (stride 32) · tiles: none', then top-k and refinement radius when they were automatic."""
        size = f", objects ≈{self.object_size:.0f} px" if self.object_size else ""
        parts = [f"input scale ×{self.input_scale:.2f}" + (f" (auto{size})" if self.scale_auto else ""),
                 f"stain: {STAIN_NAMES.get(self.stain, self.stain)}" + (" (auto)" if self.stain_auto else ""),
                 f"query grid {self.query_grid[0]}×{self.query_grid[1]} "
                 + ("(auto)" if self.query_stride is None else f"(stride {self.query_stride})"),
                 "tiles: none" if self.tiles is None else f"tiles: {self.tiles[0]}×{self.tiles[1]}"]
        if self.top_k is not None:  # a tiled run keeps top-k masks per window (engine/generators/tiling.py)
            parts.append(f"top-k {self.top_k}{'' if self.tiles is None else ' per window'} (auto)")
        if self.refine_radius is not None:
            parts.append(f"refine radius {self.refine_radius} px (auto)")
        if self.auto_generators:
            parts.append(f"+ {' + '.join(self.auto_generators)} (auto: microscopy)")
        if self.classical_methods:
            parts.append(f"classical: {', '.join(self.classical_methods)} (auto)")
        if self.freemask_weight is not None:
            parts.append(f"Free Mask weight ×{self.freemask_weight:g} (microscopy)")
        return "used: " + " · ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: what ``freesolo freemask`` stores as ``automatic`` in each COCO ``images`` entry."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AutoChoices":
        """The choices ``as_dict`` wrote (keys it does not know are ignored)."""
        values = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def tile_grid(plan: TilePlan) -> tuple[int, int]:
    """(rows, columns) of a tile plan's windows."""
    return len({w[:2] for w in plan.windows}), len({w[2:] for w in plan.windows})


def automatic_choices(features: Features, params: FreeMaskParams, result: FreeMaskResult | None = None,
                      plan: TilePlan | None = None) -> AutoChoices:
    """What ``features`` (one window's, for a tiled run), ``params`` and ``result`` say was chosen; a tiled
    run's input scale and stain are decided on the whole image, so they are read from its ``plan``."""
    auto_top = result is not None and params.top_k is None
    auto_radius = result is not None and params.refine and params.refine_radius is None
    if plan is not None:
        scale, scale_auto, size, stain_auto = plan.scale, plan.auto_scale, plan.object_size, plan.stain_auto
    else:
        scale, scale_auto, size = features.input_scale, features.auto_scale, features.object_size
        stain_auto = features.config.stain == "auto"
    return AutoChoices(
        input_scale=scale, scale_auto=scale_auto, object_size=size,
        stain=features.stain, stain_auto=stain_auto,
        query_grid=query_grid(features.grid_size, params.query_stride), query_stride=params.query_stride,
        tiles=None if plan is None or len(plan.windows) == 1 else tile_grid(plan),
        top_k=result.top_k if auto_top else None, refine_radius=result.refine_radius if auto_radius else None,
        auto_generators=result.auto_generators if result is not None else (),
        classical_methods=result.classical_methods if result is not None else (),
        freemask_weight=result.freemask_weight if result is not None else None)
