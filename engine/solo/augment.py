"""The strong training view: copy-paste of coarse masks between training images.

FreeSOLO trains on two views of each image, a weak one (here: the image or its mirror) and a
strong one where objects cut out of other images, with their coarse masks, are pasted in.
Pasted objects appear on new backgrounds and next to new neighbours, so the student cannot
lean on where an object usually is or what surrounds it, and every image gains labelled
objects (the recall ceiling of coarse masks is what limits the student).

Pure function on letterboxed ``TrainSample``s; the randomness comes from the caller's
``random.Random`` so training stays reproducible and resumable.
"""

from __future__ import annotations

import random

import torch

from engine.solo.data import TrainSample

MIN_KEPT_FRACTION = 0.3  # a target mask covered by pasted objects beyond this is dropped


def _shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x`` (..., S, S) moved by (dy, dx) with zeros shifted in (no wrap-around)."""
    out = torch.zeros_like(x)
    s_h, s_w = x.shape[-2:]
    ys, yd = (slice(0, s_h - dy), slice(dy, s_h)) if dy >= 0 else (slice(-dy, s_h), slice(0, s_h + dy))
    xs, xd = (slice(0, s_w - dx), slice(dx, s_w)) if dx >= 0 else (slice(-dx, s_w), slice(0, s_w + dx))
    out[..., yd, xd] = x[..., ys, xs]
    return out


def copy_paste(target: TrainSample, source: TrainSample, rng: random.Random, max_objects: int = 3) -> TrainSample:
    """``target`` with up to ``max_objects`` of ``source``'s masks (and their pixels) pasted in.

    Each pasted object keeps its size and moves to a random place inside ``target``'s image
    region; target masks lose the pixels it covers, and are dropped when less than
    ``MIN_KEPT_FRACTION`` of them stays visible. Ignore regions are cut the same way.
    """
    if source.masks.shape[0] == 0:
        return target
    picks = rng.sample(range(source.masks.shape[0]), min(max_objects, source.masks.shape[0]))
    image = target.image.clone()
    masks = target.masks.clone()
    pasted, used, union = [], [], torch.zeros(target.image.shape[-2:], dtype=torch.bool)
    ch, cw = target.content
    for k in picks:
        m = source.masks[k]
        rows = torch.nonzero(m.any(1)).flatten()
        cols = torch.nonzero(m.any(0)).flatten()
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        if y1 - y0 > ch or x1 - x0 > cw:
            continue
        dy = rng.randint(0, ch - (y1 - y0)) - y0
        dx = rng.randint(0, cw - (x1 - x0)) - x0
        moved = _shifted(m, dy, dx)
        image = torch.where(moved[None], _shifted(source.image, dy, dx), image)
        masks &= ~moved
        pasted = [p & ~moved for p in pasted] + [moved]
        used.append(k)
        union |= moved
    if not pasted:
        return target
    kept = masks.flatten(1).sum(1) >= MIN_KEPT_FRACTION * target.masks.flatten(1).sum(1).clamp_min(1)
    kept &= masks.flatten(1).any(1)
    pasted_t = torch.stack(pasted)
    alive = pasted_t.flatten(1).any(1)
    ignore = None if target.ignore is None else target.ignore & ~union
    return TrainSample(
        file_name=target.file_name,
        image=image,
        masks=torch.cat([masks[kept], pasted_t[alive]]),
        weights=torch.cat([target.weights[kept], torch.ones(int(alive.sum()))]),
        content=target.content,
        ignore=ignore,
        trusted=target.trusted,
        embeddings=_pasted_embeddings(target, source, kept, torch.tensor(used)[alive]),
    )


def _pasted_embeddings(target: TrainSample, source: TrainSample, kept: torch.Tensor, pasted: torch.Tensor
                       ) -> torch.Tensor | None:
    """The embeddings of the kept target masks, then of the pasted source masks (zero rows where
    the source has none)."""
    if target.embeddings is None:
        return None
    dim = target.embeddings.shape[1]
    rows = source.embeddings[pasted] if source.embeddings is not None else torch.zeros(len(pasted), dim)
    return torch.cat([target.embeddings[kept], rows])
