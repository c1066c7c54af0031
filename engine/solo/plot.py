"""A loss-curve PNG from a training log, drawn with PIL (no plotting library needed)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"total": (20, 20, 20), "category": (214, 39, 40), "mask": (31, 119, 180), "pairwise": (44, 160, 44),
           "embedding": (148, 103, 189)}


def plot_losses(log: Path, out: Path, size: tuple[int, int] = (640, 360)) -> Path:
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    w, h = size
    pad = 40
    draw.rectangle([pad, pad // 2, w - pad // 2, h - pad], outline=(160, 160, 160))
    if rows:
        top = max(max(r.get(k, 0.0) for k in COLOURS) for r in rows) or 1.0
        n = max(len(rows) - 1, 1)
        for key, colour in COLOURS.items():
            pts = [(pad + (w - 1.5 * pad) * i / n, h - pad - (h - 1.5 * pad) * r.get(key, 0.0) / top)
                   for i, r in enumerate(rows)]
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2)
        for j, (key, colour) in enumerate(COLOURS.items()):
            draw.text((pad + 5 + 90 * j, 4), key, fill=colour)
        draw.text((4, pad // 2), f"{top:.2f}", fill=(80, 80, 80))
        draw.text((w - pad * 2, h - pad + 6), f"iter {rows[-1].get('iter', len(rows))}", fill=(80, 80, 80))
    img.save(out, format="PNG")
    return out
