"""The ``engine.cli selftrain`` process of the Self-training section: launched, read, stopped.

Stopping is one policy wherever it happens (Cancel, the section going away, napari quitting):
SIGINT first, so the trainer finishes its iteration and saves a checkpoint, then kill if the
process has not ended after a timeout — waited for here (``block``), or by a timer while Qt's
event loop keeps running.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Callable

from qtpy.QtCore import QProcess, QProcessEnvironment, QTimer

KILL_AFTER_MS = 20_000  # Cancel: SIGINT first, kill if the process is still there after this


def is_running(proc: QProcess | None) -> bool:
    return proc is not None and proc.state() != QProcess.ProcessState.NotRunning


def trainer_environment() -> QProcessEnvironment:
    """The process environment: engine/ importable, unbuffered output, one core left to the viewer."""
    env = QProcessEnvironment.systemEnvironment()
    root = str(Path(__file__).resolve().parents[2])  # engine/ is importable even without an install
    env.insert("PYTHONPATH", os.pathsep.join(p for p in (root, env.value("PYTHONPATH", "")) if p))
    env.insert("PYTHONUNBUFFERED", "1")
    if not env.contains("OMP_NUM_THREADS"):  # leave one core to the viewer (and no oversubscription)
        from engine.runtime.device import available_cpu_count

        env.insert("OMP_NUM_THREADS", str(max(1, available_cpu_count() - 1)))
    return env


def launch(parent, args: list[str]) -> QProcess:
    """A QProcess running ``python args`` with :func:`trainer_environment` (not started yet)."""
    proc = QProcess(parent)
    proc.setProcessEnvironment(trainer_environment())
    proc.setProgram(sys.executable)
    proc.setArguments(args)
    return proc


def stop_process(proc: QProcess, wait_ms: int = 10_000, *, block: bool = True,
                 on_kill: Callable[[], None] | None = None) -> None:
    """SIGINT (the trainer saves a checkpoint), then kill if still running after ``wait_ms``.

    ``block`` waits here (the application quits, the section goes away); otherwise a timer kills
    it later. ``on_kill`` is told before a kill.
    """
    try:
        if not is_running(proc):
            return
        pid = int(proc.processId())
        if hasattr(signal, "SIGINT") and os.name == "posix" and pid > 0:
            os.kill(pid, signal.SIGINT)
        else:  # no SIGINT to send (Windows): ask the process to end
            proc.terminate()
        if not block:
            QTimer.singleShot(wait_ms, lambda: _kill(proc, on_kill))
        elif not proc.waitForFinished(wait_ms):
            _kill(proc, on_kill)
            proc.waitForFinished(2000)
    except (RuntimeError, ProcessLookupError):  # already gone
        pass


def _kill(proc: QProcess, on_kill: Callable[[], None] | None) -> None:
    try:
        if is_running(proc):
            if on_kill is not None:
                on_kill()
            proc.kill()
    except RuntimeError:  # the process object (or whoever wanted to hear of it) is gone
        pass


def read_round(path: Path, source: str):
    """Worker body: a round's COCO masks as {file name: ImageResult}, and the entries skipped."""
    from engine.io.coco import load_image_results

    problems: list[str] = []
    return load_image_results(path, source=source, problems=problems), problems
