"""Weight files: reading local checkpoints safely and fetching verified downloads.

Nothing here touches the network unless a caller passes an explicit URL: the
default backbone ships inside a pip package, and users of other checkpoints
usually already have the file.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from .base import BackboneError

__all__ = [
    "ChecksumMismatchError",
    "WeightsError",
    "WeightsUnavailableError",
    "default_cache_dir",
    "fetch_weights",
    "file_sha256",
    "read_checkpoint",
    "select_backbone_namespace",
    "verify_sha256",
]

#: Wrapper keys that training frameworks put around the real state dict, most specific first.
_CONTAINER_KEYS: tuple[str, ...] = ("state_dict", "model", "teacher", "student")
#: Prefixes under which self-supervised frameworks store the backbone we want.
_NAMESPACES: tuple[str, ...] = ("backbone.", "encoder_q.")
_CHUNK = 1 << 20


class WeightsError(BackboneError):
    """Base class for weight download / verification problems."""


class WeightsUnavailableError(WeightsError):
    """The weights could not be downloaded (offline, refused, HTTP error)."""


class ChecksumMismatchError(WeightsError):
    """A file's SHA-256 differs from the expected one (corrupt or wrong file)."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in chunks so large checkpoints stay out of memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _normalise_sha256(expected: str) -> str:
    value = expected.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(f"expected a 64-character hex SHA-256, got {expected!r}")
    return value


def verify_sha256(path: str | os.PathLike[str], expected: str) -> None:
    """Raise ``ChecksumMismatchError`` unless the file's SHA-256 equals ``expected``."""
    want = _normalise_sha256(expected)
    got = file_sha256(path)
    if got != want:
        raise ChecksumMismatchError(f"checksum mismatch for {path}: expected sha256 {want}, got {got}")


def cache_root() -> Path:
    """``$FREESOLO_CACHE``, else ``~/.cache/freesolo-napari``: the root of every on-disk cache."""
    root = os.environ.get("FREESOLO_CACHE", "").strip()
    return Path(root).expanduser() if root else Path.home() / ".cache" / "freesolo-napari"


def default_cache_dir() -> Path:
    """``$FREESOLO_CACHE/weights``, else ``~/.cache/freesolo-napari/weights``."""
    return cache_root() / "weights"


def fetch_weights(
    url: str,
    sha256: str,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    timeout: float = 30.0,
) -> Path:
    """Return a local, checksum-verified copy of ``url``, downloading it only if needed.

    The download goes to a temporary file in the cache dir and is renamed into place
    only after its checksum matched, so an interrupted download never looks cached.
    ``progress(done_bytes, total_bytes)`` is called per chunk (total 0 if unknown).
    """
    expected = _normalise_sha256(sha256)
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise ValueError(f"unsupported URL scheme in {url!r}; use http(s):// or file://")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name or f"{expected[:16]}.pth"
    target = cache / name
    if target.is_file() and file_sha256(target) == expected:
        return target

    fd, tmp_name = tempfile.mkstemp(dir=cache, prefix=f".{name}.", suffix=".part")
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    total = int(response.headers.get("Content-Length") or 0)
                    done = 0
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                raise WeightsUnavailableError(
                    f"could not download {url} (offline?): {reason}; download it yourself "
                    "and pass the local file path with --backbone PATH"
                ) from exc
        got = digest.hexdigest()
        if got != expected:
            raise ChecksumMismatchError(
                f"checksum mismatch for {url}: expected sha256 {expected}, got {got}; "
                "the file is corrupt or not the one expected"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a checkpoint file as a flat ``{key: tensor}`` dict with ``module.`` stripped.

    Uses ``weights_only`` loading, so checkpoints that pickle arbitrary Python
    objects are refused rather than executed. Wrappers such as ``{"state_dict": ...}``,
    ``{"model": ...}`` or DINO's ``{"teacher": ...}`` are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"backbone weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ""
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            hint = (
                " (it pickles Python objects, which are not loaded for safety; re-save only "
                "its state_dict with torch.save(ckpt['state_dict'], 'weights.pth'))"
            )
        raise BackboneError(f"could not read checkpoint {path}: {first}{hint}") from exc
    except Exception as exc:  # torch raises many types for corrupt / non-torch files
        raise BackboneError(f"could not read checkpoint {path} ({type(exc).__name__}: {exc})") from exc

    for _ in range(len(_CONTAINER_KEYS)):
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise BackboneError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    tensors: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            while key.startswith("module."):
                key = key[len("module.") :]
            tensors[str(key)] = value
    if not tensors:
        raise BackboneError(
            f"checkpoint {path} contains no tensors; top-level keys: {list(obj)[:8]}"
        )
    return tensors


def select_backbone_namespace(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep only the backbone's keys, without their framework prefix.

    Self-supervised checkpoints hold more than the backbone: MoCo's ``encoder_q.``
    next to its momentum encoder ``encoder_k.`` and queues, OpenSelfSup/DINO's
    ``backbone.`` next to ``neck.``/``head.``. When such a namespace exists, only its
    keys are kept; otherwise the dict is returned as is.
    """
    for prefix in _NAMESPACES:
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if sub:
            return sub
    return dict(state)
