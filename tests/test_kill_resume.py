"""kill -9 in the middle of work: a rerun resumes, and every file on disk is an old or a new complete one.

Each test starts a real ``freesolo`` process (or a writer), waits until it has done part of its
work, kills it with SIGKILL (no handler, no clean-up runs), checks what is on disk, then runs the
same command again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.data.synthetic import write_synthetic_dataset
from engine.io.coco import read_coco

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")
ROOT = Path(__file__).resolve().parents[1]


def _start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "engine.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _run(args: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            pytest.fail(f"the process ended (code {proc.returncode}) before the kill point:\n{out[-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail("the kill point was not reached in time")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _visible_files_are_complete(folder: Path) -> None:
    """Every non-hidden JSON file parses and every checkpoint loads (hidden ones are temps and locks)."""
    for path in folder.rglob("*"):
        if path.is_dir() or path.name.startswith("."):
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".pt":
            torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("kill")
    return write_synthetic_dataset(root, 6, seed=4, size=(96, 96), kind="cartoon")


@pytest.fixture
def env(tmp_path) -> dict:
    return {**os.environ, "FREESOLO_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_freemask_killed_mid_folder_resumes_from_the_feature_cache(data, tmp_path, env):
    images, _gt = data
    out = tmp_path / "masks.json"
    features = tmp_path / "cache" / "features"
    proc = _start(["freemask", str(images), "--out", str(out), "--device", "cpu", "--input-scale", "1"], env)
    _kill_when(proc, lambda: len([p for p in features.rglob("*.pt") if not p.name.startswith(".")]) >= 2)
    assert not out.exists()  # the COCO file is written at the end, never half
    _visible_files_are_complete(tmp_path)
    done = _run(["freemask", str(images), "--out", str(out), "--device", "cpu", "--input-scale", "1"], env)
    assert done.returncode == 0, done.stderr
    cached = int(done.stdout.splitlines()[-1].split("(")[1].split(" from cache")[0])  # the summary line
    assert cached >= 2 and len(read_coco(out).images) == 6
    assert [p.name for p in tmp_path.rglob(".*tmp-*")] == []  # the killed run's temp files were swept


def test_training_killed_resumes_from_its_last_checkpoint(data, tmp_path, env):
    images, gt = data
    run = tmp_path / "run"
    args = ["train", str(images), "--masks", str(gt), "--out", str(run), "--size", "64", "--iters", "40",
            "--checkpoint-every", "3", "--device", "cpu", "--no-amp"]
    proc = _start(args, env)
    log = run / "log.jsonl"
    _kill_when(proc, lambda: (run / "checkpoint.pt").exists() and log.exists() and log.read_text().count("\n") >= 5)
    _visible_files_are_complete(run)
    step = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    assert step >= 3 and not (run / "model.pt").exists()
    done = _run([*args, "--resume"], env)
    assert done.returncode == 0, done.stderr
    assert torch.load(run / "model.pt", weights_only=True)["step"] == 40
    iters = [json.loads(line)["iter"] for line in log.read_text().splitlines()]  # every line whole
    assert iters[-1] == 40 and step + 1 in iters


def test_selftrain_killed_keeps_finished_rounds(data, tmp_path, env):
    images, _gt = data
    run = tmp_path / "st"
    args = ["selftrain", str(images), "--out", str(run), "--rounds", "1", "--iters", "30", "--size", "64",
            "--checkpoint-every", "2", "--device", "cpu", "--no-amp"]
    proc = _start(args, env)
    _kill_when(proc, lambda: (run / "round_1" / "checkpoint.pt").exists())
    _visible_files_are_complete(run)
    coarse = run / "round_0" / "coarse.json"
    before = coarse.stat().st_mtime_ns
    done = _run([*args, "--resume"], env)
    assert done.returncode == 0, done.stderr
    assert coarse.stat().st_mtime_ns == before  # round 0 was not redone
    assert (run / "round_1" / "predictions.json").exists() and (run / "summary.json").exists()


_WRITER = """
import sys, numpy as np
from engine.io.coco import build_coco_dataset, write_coco
from engine.structures import ImageResult, InstanceMask
out, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(n)
results = [ImageResult(f"img_{i}.png", 64, 64, [InstanceMask(rng.random((64, 64)) > 0.5, 0.5) for _ in range(40)])
           for i in range(40)]
print("ready", flush=True)
while True:
    write_coco(out, build_coco_dataset(results), overwrite=True)
"""


def test_an_export_killed_mid_write_leaves_the_old_or_the_new_file(tmp_path, env):
    out = tmp_path / "export.json"
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(out), str(round_)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        _kill_when(proc, lambda: out.exists() and any(tmp_path.glob(".export.tmp-*")))
        assert len(read_coco(out).images) == 40  # complete, never half written
    subprocess.run([sys.executable, "-c", _WRITER.replace("while True:", "for _ in range(1):"), str(out), "9"],
                   cwd=ROOT, env=env, check=True, timeout=120)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".export")) == []


_KILLED_IN_BACKUP = """
import os, signal, sys
from pathlib import Path
import engine.io.atomic as atomic
real_replace = os.replace
def replace(src, dst):
    if str(dst).endswith(".bak"):
        os.kill(os.getpid(), signal.SIGKILL)  # dies with the backup copy written, not yet renamed
    real_replace(src, dst)
atomic.os.replace = replace
atomic.atomic_save(sys.argv[1], lambda tmp: Path(tmp).write_text("new"), overwrite=True)
"""


def test_a_writer_killed_while_making_the_backup_leaves_nothing_after_the_next_write(tmp_path, env):
    out = tmp_path / "export.json"
    out.write_text("old")
    proc = subprocess.run([sys.executable, "-c", _KILLED_IN_BACKUP, str(out)], cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert out.read_text() == "old"
    from engine.io.atomic import atomic_save
    atomic_save(out, lambda tmp: tmp.write_text("newer"), overwrite=True)
    assert out.read_text() == "newer" and (tmp_path / "export.json.bak").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".export")) == []


def test_two_writers_of_one_file_one_wins_the_other_is_told(tmp_path):
    from engine.io.atomic import OutputError, atomic_write_text

    target = tmp_path / "same.json"
    lock = tmp_path / ".same.json.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(str(holder.pid))  # another live process is writing it
        with pytest.raises(OutputError, match=f"pid {holder.pid}.*nothing was written"):
            atomic_write_text(target, "{}", overwrite=True)
        assert not target.exists()
    finally:
        holder.kill()
        holder.wait()
    atomic_write_text(target, "{}")  # the writer is gone: its lock is stale and swept
    assert target.read_text() == "{}" and not lock.exists()
