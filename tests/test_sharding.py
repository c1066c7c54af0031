"""Free Mask and SOLO prediction split across processes: the merged file equals one process's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.io.masks import rle_to_mask
from engine.runtime.batch import BatchReport, shard_of
from engine.runtime.sharding import ShardError, merge_parts, part_path, write_part
from engine.io.coco import CocoStreamWriter, build_coco_dataset
from engine.structures import ImageResult, InstanceMask


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """4 tiny synthetic photos and one broken file."""
    from engine.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("shard")
    write_synthetic_dataset(root, 4, seed=5, size=(96, 96), kind="photo")
    (root / "images" / "img_0002b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root / "images"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _masks(path: Path) -> dict[str, list[tuple[np.ndarray, float]]]:
    data = json.loads(path.read_text())
    names = {img["id"]: img["file_name"] for img in data["images"]}
    out: dict[str, list] = {img["file_name"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        out[names[ann["image_id"]]].append((rle_to_mask(ann["segmentation"]), ann["score"]))
    return out


def assert_same_coco(a: Path, b: Path) -> None:
    da, db = json.loads(a.read_text()), json.loads(b.read_text())
    assert da["images"] == db["images"]  # same files, same order, same ids and sizes
    assert [x["id"] for x in da["annotations"]] == [x["id"] for x in db["annotations"]]
    assert [x["image_id"] for x in da["annotations"]] == [x["image_id"] for x in db["annotations"]]
    ma, mb = _masks(a), _masks(b)
    for name in ma:
        assert len(ma[name]) == len(mb[name]), name
        for (m1, s1), (m2, s2) in zip(ma[name], mb[name]):
            inter, union = (m1 & m2).sum(), (m1 | m2).sum()
            assert inter / max(union, 1) > 0.99, name
            assert s1 == pytest.approx(s2, abs=1e-4)


def test_shards_are_disjoint_and_cover_the_listing():
    shares = [list(shard_of(11, (r, 3))) for r in range(3)]
    assert sorted(sum(shares, [])) == list(range(11))
    assert shares[1] == [1, 4, 7, 10]
    assert list(shard_of(5, None)) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        shard_of(5, (3, 3))


def _square(i: int) -> InstanceMask:
    m = np.zeros((8, 8), bool)
    m[i: i + 3, 1:4] = True
    return InstanceMask(m, score=0.5 + i / 10)


def test_merge_renumbers_keeps_listing_order_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "merged.json"
    names = [f"im{k}.png" for k in range(5)]
    for rank in range(2):
        report = BatchReport()
        part = CocoStreamWriter(part_path(out, rank, 2), info={"description": "x"}, overwrite=True, backup=False)
        for pos in shard_of(5, (rank, 2)):  # each result spooled as it comes, none kept in the report
            report.order[names[pos]] = pos
            part.add(ImageResult(names[pos], 8, 8, [_square(pos), _square(pos + 1)][: pos % 3]))
        report.failures.append((f"bad{rank}.png", f"bad{rank}.png: broken"))
        report.skipped.append(("notes.txt", "not an image"))
        write_part(out, rank, 2, report, part)
        assert not report.results
    single = build_coco_dataset([ImageResult(n, 8, 8, [_square(p), _square(p + 1)][: p % 3])
                                 for p, n in enumerate(names)], info={"description": "x"})
    out.write_text("old")
    with pytest.raises(FileExistsError):
        merge_parts(out, 2)
    assert part_path(out, 0, 2).is_file() and out.read_text() == "old"  # nothing lost
    summary = merge_parts(out, 2, overwrite=True)
    assert json.loads(out.read_text()) == single  # byte for byte what one process writes
    assert (tmp_path / "merged.json.bak").read_text() == "old"
    assert not list(tmp_path.glob("*.part"))
    assert summary.images == 5 and summary.masks == len(single["annotations"])
    assert [p for p, _ in summary.failures] == ["bad0.png", "bad1.png"]
    assert summary.skipped == [("notes.txt", "not an image")]  # listed by both ranks, reported once
    with pytest.raises(ShardError, match="rank0-of-2.part is missing"):
        merge_parts(out, 2, overwrite=True)


def test_freemask_on_two_processes_equals_one(folder, tmp_path, capsys):
    args = ["freemask", str(folder), "--top-k", "4", "--device", "cpu"]
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert main([*args, "--out", str(one), "--no-cache"]) == 1  # the broken file fails the run ...
    lines = capsys.readouterr().out.splitlines()
    choices = [line for line in lines if ": used: " in line]
    assert main([*args, "--out", str(two), "--nproc", "2", "--labels", str(tmp_path / "labels")]) == 1  # ... here too
    out = capsys.readouterr()
    assert len(choices) == 4 and [line for line in out.out.splitlines() if ": used: " in line] == choices
    assert out.out.splitlines()[:4] == lines[:4] == choices  # before the summary line, as one process prints them
    assert "img_0002b.png" in out.err and "1 file(s) failed" in out.err  # reported by rank 1, summed up by the merge
    assert "4 images" in out.out and "2 processes" in out.out and "0 from cache" in out.out
    assert_same_coco(one, two)
    assert json.loads(two.read_text())["images"][0]["file_name"] == "img_0000.png"
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == [f"img_000{k}.png" for k in range(4)]
    assert not list(tmp_path.glob("*.part"))
    # never silently replaced; --overwrite keeps the old file; the feature cache makes the rerun cheap
    assert main([*args, "--out", str(two), "--nproc", "2"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--out", str(two), "--nproc", "2", "--overwrite"]) == 1
    assert "4 from cache" in capsys.readouterr().out
    assert (tmp_path / "two.json.bak").is_file()
    assert_same_coco(one, two)


@pytest.fixture(scope="module")
def tiny_model(folder, tmp_path_factory) -> Path:
    """A SOLO trained for 2 iterations on the synthetic ground truth, with inference thresholds low
    enough that it predicts masks however little it learned (what is compared here is the merge)."""
    from engine.solo.config import TrainConfig
    from engine.solo.train import train

    run = tmp_path_factory.mktemp("solo")
    train(folder, folder.parent / "gt.json", run, cfg=TrainConfig(iters=2, batch=2, size=96))
    state = torch.load(run / "model.pt", weights_only=True)
    state["model_config"]["inference"].update(mask_thr=0.1, update_thr=0.0)
    torch.save(state, run / "model.pt")
    return run / "model.pt"


def test_predict_on_two_processes_equals_one(folder, tiny_model, tmp_path, capsys):
    args = ["predict", str(folder), "--model", str(tiny_model), "--score-thr", "0.0", "--max-per-image", "5",
            "--device", "cpu"]
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert main([*args, "--out", str(one)]) == 1  # the broken file
    capsys.readouterr()
    assert main([*args, "--out", str(two), "--nproc", "2", "--format", "rle"]) == 1
    out = capsys.readouterr()
    assert "img_0002b.png" in out.err and "4 images" in out.out and "2 processes" in out.out
    assert json.loads(one.read_text())["annotations"]  # something to compare
    assert_same_coco(one, two)
    assert not list(tmp_path.glob("*.part"))
    # a checkpoint that cannot be used is one clear error before any process starts
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main([*args[:3], str(bad), "--out", str(tmp_path / "x.json"), "--nproc", "2"]) == 2
    assert "bad.pt" in capsys.readouterr().err and not (tmp_path / "x.json").exists()


def test_nproc_inside_torchrun_is_refused(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["freemask", str(folder), "--out", str(tmp_path / "o.json"), "--nproc", "2"]) == 2
    assert "--nproc-per-node" in capsys.readouterr().err
    assert main(["freemask", str(folder), "--out", str(tmp_path / "o.json"), "--nproc", "0"]) == 2
