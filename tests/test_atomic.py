"""Atomic output writing: no partial files, no silent overwrites."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from engine.io.atomic import (
    OutputError,
    OutputExistsError,
    atomic_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    to_jsonable,
)


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_writes_new_file_and_creates_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.txt"
    assert atomic_write_text(target, "héllo") == target
    assert target.read_text(encoding="utf-8") == "héllo"
    assert _leftovers(target.parent, {"out.txt"}) == []


def test_new_file_gets_normal_permissions(tmp_path: Path) -> None:
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    target = atomic_write_bytes(tmp_path / "x.bin", b"1")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


def test_refuses_to_overwrite_before_calling_writer(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    called = []
    with pytest.raises(OutputExistsError) as info:
        atomic_save(target, lambda p: called.append(p), overwrite=False)
    assert called == []
    msg = str(info.value)
    assert str(target) in msg and "--overwrite" in msg and "overwrite=True" in msg
    assert isinstance(info.value, FileExistsError)
    assert target.read_text() == "old"


def test_overwrite_keeps_backup_and_replaces_older_backup(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write_text(target, "v1")
    atomic_write_text(target, "v2", overwrite=True)
    assert target.read_text() == "v2"
    assert (tmp_path / "out.txt.bak").read_text() == "v1"
    atomic_write_text(target, "v3", overwrite=True)
    assert (tmp_path / "out.txt.bak").read_text() == "v2"
    assert _leftovers(tmp_path, {"out.txt", "out.txt.bak"}) == []


def test_overwrite_without_backup(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write_text(target, "v1")
    atomic_write_text(target, "v2", overwrite=True, backup=False)
    assert target.read_text() == "v2"
    assert not (tmp_path / "out.txt.bak").exists()


def test_failing_writer_leaves_original_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("original")

    def bad_writer(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save(target, bad_writer, overwrite=True)
    assert target.read_text() == "original"
    assert _leftovers(tmp_path, {"out.txt"}) == []  # no temp, no .bak


def test_failing_writer_on_new_path_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "new.png"

    def bad_writer(tmp: Path) -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError):
        atomic_save(target, bad_writer)
    assert list(tmp_path.iterdir()) == []


def test_temp_file_has_same_suffix_in_same_folder(tmp_path: Path) -> None:
    seen: list[Path] = []

    def writer(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_bytes(b"x")

    atomic_save(tmp_path / "labels.tif", writer)
    assert seen[0].suffix == ".tif"
    assert seen[0].parent == tmp_path
    assert not seen[0].exists()


def test_parent_is_a_file_gives_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("I am a file")
    with pytest.raises(OutputError) as info:
        atomic_write_text(blocker / "sub" / "out.txt", "x")
    assert "out.txt" in str(info.value)


@pytest.mark.skipif(os.name != "posix" or (hasattr(os, "geteuid") and os.geteuid() == 0),
                    reason="needs POSIX permissions and a non-root user")
def test_read_only_folder_gives_output_error(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            atomic_write_text(ro / "out.txt", "x")
    finally:
        ro.chmod(0o700)


def test_target_is_folder(tmp_path: Path) -> None:
    (tmp_path / "out.json").mkdir()
    with pytest.raises(OutputError, match="folder"):
        atomic_write_text(tmp_path / "out.json", "{}", overwrite=True)


def test_json_converts_numpy_and_is_compact(tmp_path: Path) -> None:
    obj = {
        "i": np.int64(3),
        "f": np.float32(0.5),
        "b": np.bool_(True),
        "arr": np.arange(3, dtype=np.uint8),
        "nested": [{"t": (1, 2)}],
        np.int32(7): "key",
    }
    path = atomic_write_json(tmp_path / "x.json", obj)
    text = path.read_text(encoding="utf-8")
    assert " " not in text and "\n" not in text
    assert json.loads(text) == {
        "i": 3, "f": 0.5, "b": True, "arr": [0, 1, 2], "nested": [{"t": [1, 2]}], "7": "key",
    }


def test_to_jsonable_rejects_objects() -> None:
    with pytest.raises(TypeError):
        to_jsonable({"x": object()})
    with pytest.raises(TypeError):
        to_jsonable(np.array(["a"], dtype=object))


def test_unicode_path(tmp_path: Path) -> None:
    target = tmp_path / "données" / "résultats ü.json"
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}


def test_file_mode_follows_the_umask_without_changing_it(tmp_path, monkeypatch):
    """Atomic writes give the mode a plain open() would, and never flip the process umask
    (flipping it raced with worker threads creating files)."""
    from engine.io import atomic

    calls = []
    real = os.umask
    monkeypatch.setattr(os, "umask", lambda m: calls.append(m) or real(m))
    atomic._default_file_mode.cache_clear()
    target = atomic.atomic_write_json(tmp_path / "x.json", {"a": 1})
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert (target.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)
    assert calls == []


def test_threads_writing_one_file_take_turns_and_the_lock_table_does_not_grow(tmp_path: Path) -> None:
    import threading
    import time

    from engine.io import atomic

    target, inside, seen = tmp_path / "shared.txt", [0], []

    def writer(k: int):
        def write(tmp: Path) -> None:
            inside[0] += 1
            seen.append(inside[0])  # how many writers are inside at once
            time.sleep(0.01)
            tmp.write_text(str(k))
            inside[0] -= 1
        return write

    threads = [threading.Thread(target=atomic_save, args=(target, writer(k)), kwargs={"overwrite": True})
               for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [1] * 6 and target.read_text() in {str(k) for k in range(6)}
    for k in range(50):  # e.g. one feature-cache file per image of a folder run
        atomic_save(tmp_path / f"f{k}.bin", lambda tmp: tmp.write_bytes(b"x"))
    assert atomic._THREAD_LOCKS == {}
