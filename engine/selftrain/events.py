"""The progress-event protocol of ``freesolo selftrain --progress json``.

One JSON object per line on stdout, each with an ``event`` field:

- ``phase``: ``round``, ``rounds``, ``phase`` ("freemask", "train" with ``iters``, "predict");
- ``progress``: ``round``, ``rounds``, ``phase``, ``done``, ``total`` and either ``file`` (an
  image name, Free Mask and prediction) or ``loss`` (a dict of losses, training);
- ``round_done``: ``round``, ``rounds``, ``path`` (the round's masks);
- ``message``: ``text``;
- ``stopped``: ``round``, ``rounds``, ``phase`` (where it stopped; rerun to continue);
- ``done``: ``rounds``.

The engine writes them with :class:`JsonLines`; front ends read them with :func:`parse_line`.
"""

from __future__ import annotations

import json
import sys
from typing import IO

PHASE = "phase"
PROGRESS = "progress"
ROUND_DONE = "round_done"
MESSAGE = "message"
STOPPED = "stopped"
DONE = "done"
KINDS = (PHASE, PROGRESS, ROUND_DONE, MESSAGE, STOPPED, DONE)


class JsonLines:
    """``events`` and ``progress`` callbacks that write one event per line (progress events carry
    the round and phase of the last phase event)."""

    def __init__(self, stream: IO[str] | None = None):
        self._stream = stream
        self._state = {"round": 0, "rounds": 0, "phase": ""}

    def _write(self, obj: dict) -> None:
        stream = self._stream or sys.stdout
        stream.write(json.dumps(obj) + "\n")
        stream.flush()

    def events(self, event: dict) -> None:
        self._state.update({k: event[k] for k in ("round", "rounds", "phase") if k in event})
        self._write(event)

    def progress(self, done: int, total: int, info) -> None:
        event = {"event": PROGRESS, **self._state, "done": done, "total": total}
        event["file" if isinstance(info, str) else "loss"] = info
        self._write(event)

    def message(self, text: str) -> None:
        self._write({"event": MESSAGE, "text": text})


def parse_line(line: str | bytes) -> dict | None:
    """The event of one output line, or None for a line that is not one (a stray print)."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("event") not in KINDS:
        return None
    return event
