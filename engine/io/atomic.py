"""Safe output writing: write to a temp file, fsync, then rename into place.

Long batch runs get interrupted (Ctrl-C, full disk, crash). Writing in place would
leave half-written COCO files or label images that look valid but are not, and
silently replacing a user's earlier results is worse. Every writer in the engine
therefore goes through :func:`atomic_save`, which never leaves a partial file at the
target path and refuses to overwrite unless asked.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np

__all__ = [
    "OutputError",
    "OutputExistsError",
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "json_text",
    "prepare_output_dir",
    "to_jsonable",
]


class OutputExistsError(FileExistsError):
    """The target exists and the caller did not ask to overwrite it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        super().__init__(
            f"output '{self.path}' already exists; pass --overwrite (CLI) or "
            f"overwrite=True to replace it"
        )
        # FileExistsError formats str() from errno/filename when given; keep ours.
        self.filename = str(self.path)

    def __str__(self) -> str:
        return str(self.args[0])


class OutputError(OSError):
    """The output cannot be written (folder missing, not creatable, not writable)."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot write '{self.path}': {reason}")
        self.filename = str(self.path)

    def __str__(self) -> str:
        return str(self.args[0])


def _backup_path(path: Path) -> Path:
    return path.with_name(path.name + ".bak")


def _read_umask() -> int:
    """The process umask, read without changing it.

    ``os.umask`` can only be read by setting it, which would race with threads creating files
    meanwhile; Linux reports it in /proc/self/status, elsewhere a probe file's mode tells it.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    fd, probe = tempfile.mkstemp(prefix=".umask-probe-")
    try:
        os.close(fd)
        os.unlink(probe)
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o777)
        mode = os.fstat(fd).st_mode & 0o777
        os.close(fd)
        return 0o777 & ~mode
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)


@functools.lru_cache(maxsize=1)
def _default_file_mode() -> int:
    """Permissions an ordinary ``open(path, 'w')`` would give (mkstemp uses 0600)."""
    return 0o666 & ~_read_umask()


def prepare_output_dir(path: Path) -> None:
    """Make the folder of ``path`` (an OutputError that says why when it cannot be written)."""
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(path, f"'{parent}' is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            path, f"folder '{parent}' does not exist and cannot be created ({exc.strerror or exc})"
        ) from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(path, f"folder '{parent}' is not writable")


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; not supported everywhere (e.g. Windows), so best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _make_backup(path: Path) -> None:
    """Copy (hard-link when possible) the current file to ``path.bak``, atomically."""
    bak = _backup_path(path)
    # named like the writer's own temp (pid inside) so that the sweep removes it after a kill
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.tmp-{os.getpid()}-", suffix=".bak")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        tmp.unlink()
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copy2(path, tmp)
        os.replace(tmp, bak)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: keep its files
    return True


def _lock_path(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


def _lock_owner(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip() or "0")
    except (OSError, ValueError):
        return None


def _sweep_stale(path: Path) -> None:
    """Remove the temp files and lock that a killed writer of ``path`` left (its pid is gone)."""
    for leftover in path.parent.glob(f".{path.stem}.tmp-*"):
        m = re.match(rf"\.{re.escape(path.stem)}\.tmp-(\d+)-", leftover.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            leftover.unlink(missing_ok=True)
    lock = _lock_path(path)
    owner = _lock_owner(lock) if lock.exists() else None
    if owner is not None and owner != os.getpid() and not _pid_alive(owner):
        lock.unlink(missing_ok=True)


_THREAD_LOCKS: dict[Path, list] = {}  # path -> [its lock, how many threads hold or wait for it]
_THREAD_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def _writer_lock(path: Path):
    """One writer of ``path`` at a time: threads of this process wait their turn; across processes
    the first takes ``.NAME.lock`` (holding its pid) and a second one gets a clear OutputError.
    A path's thread lock is dropped when no thread needs it any more (a folder run writes a
    feature-cache file per image: the table must not grow with them)."""
    key = path.resolve()
    with _THREAD_LOCKS_GUARD:
        entry = _THREAD_LOCKS.setdefault(key, [threading.Lock(), 0])
        entry[1] += 1
    try:
        with entry[0], _file_lock(path):
            yield
    finally:
        with _THREAD_LOCKS_GUARD:
            entry[1] -= 1
            if entry[1] == 0:
                del _THREAD_LOCKS[key]


@contextlib.contextmanager
def _file_lock(path: Path):
    lock = _lock_path(path)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        raise OutputError(path, f"another process (pid {_lock_owner(lock)}) is writing it right now; "
                          "nothing was written") from None
    except OSError as exc:
        raise OutputError(path, f"cannot create a lock file ({exc.strerror or exc})") from exc
    try:
        os.write(fd, str(os.getpid()).encode())
    finally:
        os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def atomic_save(
    path: str | os.PathLike[str],
    writer: Callable[[Path], None],
    *,
    overwrite: bool = False,
    backup: bool = True,
) -> Path:
    """Write ``path`` via ``writer(tmp_path)`` so that readers only ever see a complete file.

    The temp file lives in the same folder (so ``os.replace`` is an atomic rename) and
    keeps the target's suffix (so PIL/tifffile choose the right format). With
    ``overwrite`` and ``backup`` the previous file survives as ``<name>.bak``. Temp files name
    their writer's pid, so the temp a killed writer left is removed by the next write of the
    same target; two processes writing one target at once: one wins, the other gets an
    :class:`OutputError` (or :class:`OutputExistsError` without ``overwrite``).
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(path, "a folder with that name exists")
    if path.exists() and not overwrite:
        raise OutputExistsError(path)
    prepare_output_dir(path)
    _sweep_stale(path)
    with _writer_lock(path):
        existed = path.exists()
        if existed and not overwrite:  # another writer finished first
            raise OutputExistsError(path)
        _write_and_replace(path, writer, existed, backup)
    _fsync_dir(path.parent)
    return path


def _write_and_replace(path: Path, writer: Callable[[Path], None], existed: bool, backup: bool) -> None:
    try:
        fd, tmp_name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.stem}.tmp-{os.getpid()}-", suffix=path.suffix
        )
    except OSError as exc:
        raise OutputError(path, f"cannot create a temporary file ({exc.strerror or exc})") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        if not tmp.exists():
            raise OutputError(path, "the writer did not produce a file")
        _fsync_file(tmp)
        if existed:
            try:
                shutil.copymode(path, tmp)
            except OSError:
                os.chmod(tmp, _default_file_mode())
        else:
            os.chmod(tmp, _default_file_mode())
        if existed and backup and path.exists():
            _make_backup(path)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, **kw: Any) -> Path:
    """Atomically write raw bytes (see :func:`atomic_save` for ``overwrite``/``backup``)."""

    def _write(tmp: Path) -> None:
        tmp.write_bytes(bytes(data))

    return atomic_save(path, _write, **kw)


def atomic_write_text(
    path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8", **kw: Any
) -> Path:
    """Atomically write text (UTF-8 by default, no newline translation)."""
    return atomic_write_bytes(path, text.encode(encoding), **kw)


def to_jsonable(obj: Any) -> Any:
    """Recursively convert numpy scalars/arrays, tuples, sets and paths to JSON types.

    Raises ``TypeError`` for anything that has no faithful JSON form, so callers can
    decide to skip it rather than write something lossy.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"cannot convert a numpy array of dtype {obj.dtype} to JSON")
        return obj.tolist()
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if isinstance(key, (np.integer, np.floating, np.bool_)):
                key = key.item()
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise TypeError(f"cannot use {type(key).__name__} as a JSON key")
            out[key if isinstance(key, str) else json.dumps(key)] = to_jsonable(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return [to_jsonable(v) for v in sorted(obj, key=repr)]
    if isinstance(obj, PurePath):
        return obj.as_posix()
    raise TypeError(f"cannot convert {type(obj).__name__} to JSON")


def atomic_write_json(path: str | os.PathLike[str], obj: Any, **kw: Any) -> Path:
    """Atomically write compact JSON, converting numpy values on the way."""
    return atomic_write_text(path, json_text(obj), **kw)


def json_text(obj: Any) -> str:
    """Compact JSON of ``obj`` (numpy values converted), as every JSON file of the engine is written."""
    return json.dumps(to_jsonable(obj), indent=None, separators=(",", ":"), ensure_ascii=False)
