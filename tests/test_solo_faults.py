"""SOLO under faults: full disk, masks outside their image, unusable checkpoints, missing data;
and mixed precision (CPU-testable parts: the CUDA settings resolve, bfloat16 trains, the loss
scaler's skipped steps never trip the divergence guard)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.io.coco import build_coco_dataset, write_coco
from engine.io.masks import mask_to_rle
from engine.solo import amp as amp_mod
from engine.solo import checkpoint as train_module  # the module whose open() writes checkpoints
from engine.solo.checkpoint import CheckpointError, load_model
from engine.solo.config import TrainConfig
from engine.solo.train import train
from engine.solo.trainer import TrainingDivergedError
from engine.structures import ImageResult
from engine.data.synthetic import label_map_to_masks, make_sample, sample_seed, write_synthetic_dataset

SIZE = 96


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """4 small images with their true masks as coarse masks (the recipe of test_solo_train.py, smaller)."""
    root = tmp_path_factory.mktemp("faults")
    write_synthetic_dataset(root, 4, seed=11, size=(SIZE, SIZE), kind="cartoon")
    results = []
    for i in range(4):
        _img, labels = make_sample(sample_seed(11, i), (SIZE, SIZE), kind="cartoon")
        results.append(ImageResult(f"img_{i:04d}.png", SIZE, SIZE, label_map_to_masks(labels, source="freemask")))
    write_coco(root / "coarse.json", build_coco_dataset(results))
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """A run folder with checkpoint.pt and model.pt at iteration 2."""
    run = tmp_path_factory.mktemp("run") / "run"
    train(data / "images", data / "coarse.json", run, cfg=TrainConfig(iters=2, size=SIZE, checkpoint_every=2))
    return run


def _cli_train(data, run, *extra) -> list[str]:
    return ["train", str(data / "images"), "--masks", str(data / "coarse.json"), "--out", str(run), "--size", str(SIZE),
            "--device", "cpu", *map(str, extra)]


# --------------------------------------------------------------------------- full disk


class _FullDisk:
    """A real file that takes ``room`` bytes, then fails like a full disk (ENOSPC) mid-write."""

    def __init__(self, fh, room: int):
        self.fh, self.room = fh, room

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self.fh.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()

    def tell(self) -> int:
        return self.fh.tell()


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(data, trained, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoint.pt", "model.pt", "log.jsonl"):
        (run / name).write_bytes((trained / name).read_bytes())
    before = load_model(run / "checkpoint.pt")[1]["state_dict"]
    written = []

    def open_on_a_full_disk(file, mode="r", *args, **kwargs):  # the checkpoint writer's open()
        disk = _FullDisk(open(file, mode, *args, **kwargs), room=20_000)
        written.append(disk)
        return disk

    monkeypatch.setattr(train_module, "open", open_on_a_full_disk, raising=False)
    code = main(_cli_train(data, run, "--iters", 4, "--checkpoint-every", 2, "--resume", "--amp"))
    err = capsys.readouterr().err
    assert code == 2
    assert "checkpoint.pt" in err and "No space left on device" in err and "previous checkpoint.pt is kept" in err
    assert "--amp" in err and "ignored on cpu" in err  # mixed precision is for CUDA
    assert len(written) == 1 and written[0].room == 0 and written[0].fh.closed  # a real checkpoint, cut off part-way
    monkeypatch.undo()
    _model, state = load_model(run / "checkpoint.pt")
    assert state["step"] == 2
    for k, v in before.items():
        assert torch.equal(state["state_dict"][k], v), k
    assert load_model(run / "model.pt")[1]["step"] == 2
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "log.jsonl", "model.pt"]  # no temp file


# --------------------------------------------------------------------------- masks outside the image


def test_masks_outside_the_image_are_skipped_naming_the_image(data, tmp_path, capsys):
    coarse = json.loads((data / "coarse.json").read_text())
    assert [img["file_name"] for img in coarse["images"]][:3] == ["img_0000.png", "img_0001.png", "img_0002.png"]
    bad = [
        {"id": 901, "image_id": 1, "segmentation": [[10, 10, 200, 10, 200, 40, 10, 40]]},  # partly outside
        {"id": 902, "image_id": 2, "segmentation": [[300, 300, 320, 300, 320, 320]]},  # wholly outside
        {"id": 903, "image_id": 3,
         "segmentation": mask_to_rle(np.ones((SIZE + 30, SIZE), bool))},  # RLE taller than the image
        {"id": 904, "image_id": 3, "bbox": [-20, -20, 300, 300]},  # a box and no mask
        {"id": 905, "image_id": 4, "segmentation": [[5, 5, 50, 5, 50, SIZE + 6, 5, SIZE + 6]]},  # fits the JSON's size ...
    ]
    coarse["annotations"] += [{"category_id": 1, "iscrowd": 0, **a} for a in bad]
    coarse["images"][3]["height"] = SIZE + 8  # ... but the file is 96 px tall, the JSON says 104
    path = tmp_path / "outside.json"
    path.write_text(json.dumps(coarse))
    run = tmp_path / "run"
    assert main(["train", str(data / "images"), "--masks", str(path), "--out", str(run), "--iters", "2",
                 "--size", str(SIZE), "--device", "cpu"]) == 0  # training still runs
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("skipped:")]
    for ann_id, image in ((901, "img_0000.png"), (902, "img_0001.png"), (903, "img_0002.png"),
                          (904, "img_0002.png")):
        line = next(x for x in lines if f"annotation {ann_id}" in x)
        assert image in line, line
    assert any("annotation 901" in x and "outside the image" in x for x in lines)
    assert any("img_0003.png" in x and "mask 0" in x for x in lines)  # the size mismatch, by image
    assert load_model(run / "model.pt")[1]["step"] == 2


# --------------------------------------------------------------------------- unusable checkpoints


def _tampered(trained: Path, tmp_path: Path) -> Path:
    """model.pt whose config says 32-d kernels while its weights are 64-d."""
    state = torch.load(trained / "model.pt", weights_only=True)
    state["model_config"]["head"]["kernel_dim"] = 32
    state["model_config"]["mask"]["out_dim"] = 32
    path = tmp_path / "tampered.pt"
    torch.save(state, path)
    return path


def test_predict_refuses_corrupt_and_mismatched_checkpoints(data, trained, tmp_path, capsys):
    tampered = _tampered(trained, tmp_path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tampered)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((trained / "model.pt").read_bytes()[:5000])
    for bad in (tampered, truncated):
        code = main(["predict", str(data / "images"), "--model", str(bad), "--out", str(tmp_path / "p.json"),
                     "--device", "cpu"])
        assert code == 2 and bad.name in capsys.readouterr().err
        assert not (tmp_path / "p.json").exists()


def test_resume_refuses_corrupt_and_mismatched_checkpoints(data, trained, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes((trained / "checkpoint.pt").read_bytes()[:3000])  # torn
    assert main(_cli_train(data, run, "--iters", 3, "--resume")) == 2
    assert "checkpoint.pt" in capsys.readouterr().err
    (run / "checkpoint.pt").write_bytes(_tampered(trained, tmp_path).read_bytes())  # shapes differ
    assert main(_cli_train(data, run, "--iters", 3, "--resume")) == 2
    assert "do not fit" in capsys.readouterr().err
    (run / "checkpoint.pt").write_bytes((trained / "checkpoint.pt").read_bytes())  # cpu-small ...
    assert main(_cli_train(data, run, "--iters", 3, "--resume", "--preset", "paper")) == 2  # ... resumed as paper
    assert "another model configuration" in capsys.readouterr().err
    assert load_model(run / "checkpoint.pt")[1]["step"] == 2  # nothing was overwritten


# --------------------------------------------------------------------------- missing images, empty masks


def test_no_usable_image_is_one_clear_error_and_empty_masks_still_train(data, tmp_path, capsys):
    gone = tmp_path / "gone.json"
    write_coco(gone, build_coco_dataset([ImageResult("elsewhere.png", SIZE, SIZE, [])]))
    code = main(["train", str(data / "images"), "--masks", str(gone), "--out", str(tmp_path / "r1"), "--iters", "2",
                 "--size", str(SIZE), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "no usable training images" in err and "elsewhere.png" in err
    empty = tmp_path / "empty.json"  # every image says "nothing here"
    write_coco(empty, build_coco_dataset([ImageResult(f"img_{i:04d}.png", SIZE, SIZE, []) for i in range(4)]))
    res = train(data / "images", empty, tmp_path / "r2", cfg=TrainConfig(iters=2, size=SIZE))
    assert res.iterations == 2 and res.problems == []
    assert res.last_losses["mask"] == 0.0 and np.isfinite(res.last_losses["category"])


# --------------------------------------------------------------------------- mixed precision


def test_mixed_precision_resolves_per_device():
    cuda, note = amp_mod.resolve_precision(torch.device("cuda"))  # resolving needs no GPU
    assert cuda.enabled and cuda.dtype == torch.float16 and cuda.scaled and note is None
    cpu, note = amp_mod.resolve_precision(torch.device("cpu"))
    assert not cpu.enabled and "ignored on cpu" in note
    assert amp_mod.resolve_precision("cpu", amp=False) == (amp_mod.Precision("cpu"), None)
    assert amp_mod.resolve_precision("cuda", amp=False)[0].enabled is False
    bf16, note = amp_mod.resolve_precision("cpu", amp_dtype="bfloat16")
    assert bf16.enabled and not bf16.scaled and note is None
    assert not amp_mod.grad_scaler(cpu).is_enabled()
    assert TrainConfig().amp and TrainConfig().amp_dtype == "float16"  # on by default (applies on CUDA)


def test_bfloat16_autocast_trains_on_the_cpu(data, tmp_path):
    res = train(data / "images", data / "coarse.json", tmp_path / "bf16",
                cfg=TrainConfig(iters=3, size=SIZE, amp_dtype="bfloat16"))
    assert res.precision == "mixed precision bfloat16" and res.iterations == 3
    assert all(np.isfinite(v) for v in res.last_losses.values())
    state = load_model(res.model_path)[1]["state_dict"]
    assert all(v.dtype != torch.bfloat16 and torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def _cpu_scaler(init_scale: float):
    return lambda precision: torch.amp.GradScaler("cpu", init_scale=init_scale)


def test_scaler_skipped_steps_do_not_trip_the_guard(data, tmp_path, monkeypatch):
    # a loss scale of 2**127 overflows the float32 gradients: the scaler skips those steps and
    # halves its scale until the gradients fit; training goes on (on CUDA the same with float16)
    monkeypatch.setattr(amp_mod, "grad_scaler", _cpu_scaler(2.0 ** 127))
    run = tmp_path / "scaled"
    res = train(data / "images", data / "coarse.json", run, cfg=TrainConfig(iters=20, size=SIZE, checkpoint_every=10))
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    skipped = [r["iter"] for r in log if r.get("amp_skipped")]
    assert res.iterations == 20 and 1 <= res.skipped_steps == len(skipped) < 20
    assert skipped[-1] < 20  # the first steps overflow; once the scale came down, steps go through
    state = load_model(run / "checkpoint.pt")[1]
    assert state["grad_scaler"]["scale"] < 2.0 ** 127  # kept for --resume
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_gradients_that_never_fit_stop_training_clearly(data, tmp_path, monkeypatch):
    monkeypatch.setattr(amp_mod, "grad_scaler", _cpu_scaler(float("inf")))  # every step overflows
    with pytest.raises(TrainingDivergedError, match=f"non-finite for {amp_mod.MAX_SKIPPED_STEPS} iterations"):
        train(data / "images", data / "coarse.json", tmp_path / "inf", cfg=TrainConfig(iters=40, size=SIZE))
