"""The self-training loss curve: a run's ``round_K/log.jsonl``, read incrementally and painted."""

from __future__ import annotations

import json
from pathlib import Path

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QWidget


class LossCurve(QWidget):
    """The training loss per iteration (total, mask, category), painted like the maskness histogram."""

    SERIES = (("total", QColor(230, 230, 230)), ("mask", QColor(240, 160, 60)), ("category", QColor(110, 200, 120)))

    def __init__(self):
        super().__init__(toolTip="Training loss per iteration of the current round (white total, orange mask, "
                         "green category), read live from the run's log.jsonl")
        self.setMinimumHeight(90)
        self.iters: list[int] = []
        self.values: dict[str, list[float]] = {k: [] for k, _c in self.SERIES}
        self._path: Path | None = None
        self._offset = 0

    def watch(self, path: Path | None) -> None:
        """Follow ``path`` (a log.jsonl) from its beginning."""
        if path != self._path:
            self._path, self._offset = path, 0
            self.iters = []
            self.values = {k: [] for k, _c in self.SERIES}
            self.update()
        self.poll()

    def poll(self) -> None:
        """Read the lines appended since the last call (complete lines only)."""
        if self._path is None or not self._path.is_file():
            return
        with self._path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        if end <= 0:
            return
        self._offset += end
        for line in chunk[:end].decode("utf-8", "replace").splitlines():
            try:
                row = json.loads(line)
                it = int(row["iter"])
            except (ValueError, KeyError, TypeError):
                continue
            if self.iters and it <= self.iters[-1]:  # a resumed run may repeat iterations after its checkpoint
                cut = next(i for i, old in enumerate(self.iters) if old >= it)
                self.iters = self.iters[:cut]
                self.values = {k: v[:cut] for k, v in self.values.items()}
            self.iters.append(it)
            for key in self.values:
                self.values[key].append(float(row.get(key, float("nan"))))
        self.update()

    def paintEvent(self, _event) -> None:  # noqa: N802 (Qt's name)
        p = QPainter(self)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QColor(30, 30, 34))
        finite = [v for vals in self.values.values() for v in vals if v == v]
        if len(self.iters) >= 1 and finite:
            top, x0, x1 = max(finite) or 1.0, self.iters[0], max(self.iters[-1], self.iters[0] + 1)
            for key, colour in self.SERIES:
                pts = [QPointF(4 + (w - 8) * (i - x0) / (x1 - x0), h - 14 - (h - 20) * v / top)
                       for i, v in zip(self.iters, self.values[key]) if v == v]
                p.setPen(QPen(colour, 1.5))
                p.drawPolyline(QPolygonF(pts))
            p.setPen(QColor(200, 200, 200))
            p.drawText(4, 12, f"{top:.2f}")
            p.drawText(4, h - 2, f"iteration {self.iters[0]}…{self.iters[-1]}, total {self.values['total'][-1]:.3f}")
        else:
            p.setPen(QColor(150, 150, 150))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "loss curve (starts with training)")
        p.end()
