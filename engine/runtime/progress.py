"""A dependency-free text progress bar for the command line (stderr, TTY-aware)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``bar(done, total, label)``: redraws in place on a terminal, prints sparse lines otherwise."""

    def __init__(self, title: str, stream: TextIO | None = None, width: int = 28):
        self.title = title
        self.stream = stream or sys.stderr
        self.width = width
        self.start = time.perf_counter()
        self.tty = self.stream.isatty()
        self._last_line = -1

    def __call__(self, done: int, total: int, label: str = "") -> None:
        total = max(total, 1)
        frac = done / total
        elapsed = time.perf_counter() - self.start
        eta = elapsed / done * (total - done) if done else float("nan")
        eta_txt = f"{eta:5.0f}s" if eta == eta else "    ?"
        fill = int(frac * self.width)
        text = f"{self.title} [{'#' * fill}{'.' * (self.width - fill)}] {done}/{total} ETA {eta_txt} {label[:70]}"
        if self.tty:
            self.stream.write("\r" + text.ljust(110))
            if done >= total:
                self.stream.write("\n")
        else:
            step = max(1, total // 10)
            if done >= total or done // step != self._last_line:
                self._last_line = done // step
                self.stream.write(text + "\n")
        self.stream.flush()
