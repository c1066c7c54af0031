"""Pick the torch device and CPU thread count once, with errors a user can act on.

Device strings come from the CLI / plugin, so an unavailable device must fail with a
clear ``ValueError`` instead of a CUDA stack trace deep inside a forward pass.
"""

from __future__ import annotations

import os

import torch

__all__ = ["available_cpu_count", "available_devices", "configure_cpu_threads", "resolve_device"]


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` into a usable device.

    ``auto`` prefers CUDA, then Apple MPS, then CPU. An explicit device that this
    machine cannot use raises ``ValueError`` saying why and what to pass instead.
    """
    spec = str(name).strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(
            f"unknown device {name!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from exc
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} requested but CUDA is not available "
                "(CPU-only torch build or no NVIDIA driver); use 'auto' or 'cpu'"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"device {name!r} requested but only {count} CUDA device(s) exist "
                f"(valid: {', '.join(f'cuda:{i}' for i in range(count))})"
            )
        return device
    if device.type == "mps":
        if not _mps_available():
            raise ValueError(
                f"device {name!r} requested but Apple MPS is not available on this "
                "machine; use 'auto' or 'cpu'"
            )
        return torch.device("mps")
    raise ValueError(f"unsupported device type {device.type!r}; use 'auto', 'cpu', 'cuda' or 'mps'")


def available_devices() -> list[str]:
    """The device names this machine can use, ``auto`` first and ``cpu`` last (for pickers)."""
    names = ["auto"]
    if torch.cuda.is_available():
        names.append("cuda")
        if torch.cuda.device_count() > 1:
            names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    return names + ["cpu"]


def available_cpu_count() -> int:
    """Cores this process may run on (respects taskset / container CPU sets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS / Windows have no sched_getaffinity
        return max(1, os.cpu_count() or 1)


def configure_cpu_threads(n: int | None = None, spare: int = 0) -> int:
    """Set torch's intra-op threads and return the count in effect.

    torch defaults to the machine's core count, which oversubscribes CPUs in
    containers limited by affinity. An explicit ``n`` always wins; otherwise a
    user-set ``OMP_NUM_THREADS`` is respected and left untouched, and without it torch
    gets the usable cores but ``spare`` (at least one).
    """
    if n is None:
        if os.environ.get("OMP_NUM_THREADS", "").strip():
            return torch.get_num_threads()
        n = max(1, available_cpu_count() - spare)
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    torch.set_num_threads(n)
    return n
