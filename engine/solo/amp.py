"""Mixed precision for SOLO: float16 autocast + a gradient scaler on CUDA, float32 elsewhere.

On by default on CUDA (``--amp``/``--no-amp``). float16 needs loss scaling: the scaler multiplies
the loss before backward and skips an optimiser step whose gradients overflowed (then halves
its scale), so an occasional skipped step is normal; a long run of them means the gradients are
genuinely non-finite, and training stops (``MAX_SKIPPED_STEPS``). bfloat16 (``amp_dtype``) needs
no scaler and also runs on the CPU, where it is the only autocast offered: plain ``--amp`` on a
CPU is ignored (float32), since CPU float16 is slower, not faster.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from engine.solo.model import SoloOutputs

__all__ = ["MAX_SKIPPED_STEPS", "Precision", "grad_scaler", "gradients_finite", "resolve_precision", "to_float"]

MAX_SKIPPED_STEPS = 30  # consecutive overflowing steps: the scale is down to 2**-14 from 2**16
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Precision:
    device_type: str
    dtype: torch.dtype | None = None  # None: float32, no autocast

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def scaled(self) -> bool:
        """float16 needs loss scaling; bfloat16 has float32's range and does not."""
        return self.dtype == torch.float16

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def describe(self) -> str:
        return f"mixed precision {str(self.dtype).removeprefix('torch.')}" if self.enabled else "float32"


def resolve_precision(device: torch.device | str, amp: bool = True, amp_dtype: str = "float16") -> tuple[Precision, str | None]:
    """(precision to use, a note when the request was ignored) for ``device``.

    ``amp`` True: ``amp_dtype`` autocast on CUDA; on the CPU only bfloat16 (an explicit choice),
    anything else there trains in float32 with a note; MPS always float32.
    """
    device = torch.device(device)
    if amp_dtype not in _DTYPES:
        raise ValueError(f"amp_dtype must be one of {sorted(_DTYPES)}, got {amp_dtype!r}")
    dtype = _DTYPES[amp_dtype]
    if not amp:
        return Precision(device.type), None
    if device.type == "cuda" or (device.type == "cpu" and dtype == torch.bfloat16):
        return Precision(device.type, dtype), None
    return Precision(device.type), f"mixed precision ({amp_dtype}) is for CUDA; ignored on {device.type} (float32)"


def grad_scaler(precision: Precision) -> torch.amp.GradScaler:
    """The loss scaler (a pass-through unless float16)."""
    return torch.amp.GradScaler(precision.device_type, enabled=precision.scaled)


def gradients_finite(params) -> bool:
    """Whether every gradient is finite (checked after ``scaler.unscale_``; one sync)."""
    checks = [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    return bool(torch.stack(checks).all()) if checks else True


def to_float(outputs: SoloOutputs) -> SoloOutputs:
    """Network outputs in float32 (losses and post-processing never run in half precision)."""
    return SoloOutputs([c.float() for c in outputs.categories], [k.float() for k in outputs.kernels],
                       outputs.mask_features.float(), outputs.strides, [e.float() for e in outputs.embeddings])
