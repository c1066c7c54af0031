"""Worker threads that cannot outlive the panel's widgets.

napari's ``create_worker`` runs a function in a thread and delivers its results through Qt
signals. If the viewer is closed while one runs, those signals would reach slots of widgets that
no longer exist; under PyQt6 an exception in a slot aborts the whole process (a script or a
notebook that opened napari would die with it). Workers made here are registered with the
widget that starts them: when that widget is destroyed they are asked to stop and their signals
are disconnected, so nothing touches a deleted widget.
"""

from __future__ import annotations

from typing import Any, Callable

_SIGNALS = ("started", "yielded", "returned", "errored", "warned", "finished", "aborted", "paused", "resumed")


class _Registry:
    """The running workers of one widget (a plain Python object: it outlives the widget)."""

    def __init__(self) -> None:
        self.workers: set = set()

    def add(self, worker) -> None:
        self.workers.add(worker)
        worker.finished.connect(lambda: self.workers.discard(worker))

    def shutdown(self, *_args) -> None:
        for worker in list(self.workers):
            disconnect_worker(worker)
        self.workers.clear()


def disconnect_worker(worker) -> None:
    """Ask ``worker`` to stop and cut every signal it would still emit."""
    try:
        worker.quit()
    except RuntimeError:  # its signal object is already gone
        pass
    for name in _SIGNALS:
        signal = getattr(worker, name, None)
        if signal is None:
            continue
        try:
            signal.disconnect()
        except (TypeError, RuntimeError):  # nothing connected, or already deleted
            pass


def create_worker(owner, func: Callable, *args: Any, **kwargs: Any):
    """``napari.qt.threading.create_worker(func, *args, **kwargs)``, tied to ``owner``'s lifetime."""
    from napari.qt.threading import create_worker as napari_create_worker

    worker = napari_create_worker(func, *args, **kwargs)
    registry = owner.__dict__.get("_freesolo_workers")
    if registry is None:
        registry = owner.__dict__["_freesolo_workers"] = _Registry()
        owner.destroyed.connect(registry.shutdown)
    registry.add(worker)
    return worker


def running_workers(owner) -> set:
    """The workers ``owner`` started that have not finished (for tests and shutdown checks)."""
    registry = owner.__dict__.get("_freesolo_workers")
    return set(registry.workers) if registry is not None else set()
