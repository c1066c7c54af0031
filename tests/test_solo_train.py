"""SOLO training, resume, prediction and self-training, for real on tiny generated data."""

import json
from pathlib import Path

import pytest
import torch

from engine.cli import main
from engine.io.coco import build_coco_dataset, write_coco
from engine.solo.checkpoint import CheckpointError, load_model
from engine.solo.config import TrainConfig
from engine.solo.train import train
from engine.data.synthetic import label_map_to_masks, make_sample, write_synthetic_dataset
from engine.structures import ImageResult


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """4 small images with their true masks as 'coarse' masks (plus one empty and one missing entry)."""
    root = tmp_path_factory.mktemp("solo")
    image_dir, gt = write_synthetic_dataset(root, 4, seed=11, size=(128, 128), kind="cartoon")
    results = []
    for i in range(4):
        _img, labels = make_sample_for(i)
        masks = label_map_to_masks(labels, source="freemask")
        results.append(ImageResult(f"img_{i:04d}.png", 128, 128, masks if i != 3 else []))  # one empty image
    results.append(ImageResult("missing.png", 128, 128, []))
    write_coco(root / "coarse.json", build_coco_dataset(results))
    return root


def make_sample_for(i):
    from engine.data.synthetic import sample_seed

    return make_sample(sample_seed(11, i), (128, 128), kind="cartoon")


def test_train_checkpoints_resumes_and_predicts(data, tmp_path):
    cfg = TrainConfig(iters=6, batch=2, size=128, checkpoint_every=3)
    res = train(data / "images", data / "coarse.json", tmp_path / "run", cfg=cfg)
    assert res.iterations == 6 and res.model_path.name == "model.pt"
    assert any("missing.png" in p for p in res.problems)  # reported, not fatal
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == list(range(1, 7))
    assert all({"category", "mask", "pairwise", "total"} <= set(r) for r in log)
    # resume: only the missing iterations run, from the saved step
    more = train(data / "images", data / "coarse.json", tmp_path / "run", cfg=TrainConfig(iters=9, batch=2, size=128),
                 resume=True)
    assert more.iterations == 9
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log][-3:] == [7, 8, 9]
    model, state = load_model(tmp_path / "run" / "model.pt")
    assert state["step"] == 9 and not any(k.startswith("backbone.") for k in state["state_dict"])


def test_stopping_early_keeps_a_checkpoint_and_no_final_model(data, tmp_path):
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 2

    res = train(data / "images", data / "coarse.json", tmp_path / "r", cfg=TrainConfig(iters=50, size=128),
                should_stop=stop)
    assert res.iterations == 2 and res.model_path.name == "checkpoint.pt"
    assert not (tmp_path / "r" / "model.pt").exists()


def test_bad_checkpoints_are_clear_errors(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="model.pt"):
        load_model(bad)
    torch.save({"format": "something else"}, bad)
    with pytest.raises(CheckpointError, match="not a freesolo"):
        load_model(bad)


def test_cli_train_predict_eval_and_selftrain(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(data / "images"), "--masks", str(data / "coarse.json"), "--out", str(run),
                 "--iters", "4", "--size", "128", "--device", "cpu"]) == 0
    assert (run / "model.pt").is_file() and (run / "loss.png").is_file()
    pred = tmp_path / "pred.json"
    assert main(["predict", str(data / "images"), "--model", str(run / "model.pt"), "--out", str(pred),
                 "--score-thr", "0.01", "--device", "cpu"]) == 0
    assert json.loads(pred.read_text())["images"]
    assert main(["eval", str(data / "gt.json"), str(pred)]) == 0
    capsys.readouterr()
    st = tmp_path / "st"
    assert main(["selftrain", str(data / "images"), "--out", str(st), "--rounds", "2", "--iters", "3", "--size", "128",
                 "--gt", str(data / "gt.json"), "--device", "cpu", "--keep-thr", "0.0"]) == 0
    out = capsys.readouterr().out
    for k in range(3):
        assert f"| {k} |" in out
    assert (st / "round_0" / "coarse.json").is_file()
    assert (st / "round_1" / "model.pt").is_file() and (st / "round_2" / "predictions.json").is_file()
    assert (st / "round_2" / "train_masks.json").is_file()
    # resumable: a second run finds every round done and trains nothing
    assert main(["selftrain", str(data / "images"), "--out", str(st), "--rounds", "2", "--iters", "3", "--size", "128",
                 "--device", "cpu"]) == 0
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"x")
    assert main(["predict", str(data / "images"), "--model", str(bad), "--out", str(tmp_path / "p2.json")]) == 2


def test_two_gloo_processes_both_train_and_rank0_writes(data, tmp_path, capsys):
    run = tmp_path / "ddp"
    code = main(["train", str(data / "images"), "--masks", str(data / "coarse.json"), "--out", str(run),
                 "--iters", "3", "--batch", "2", "--size", "128", "--device", "cpu", "--nproc", "2"])
    assert code == 0
    model, state = load_model(run / "model.pt")
    assert state["world_size"] == 2
    assert len(state["images_per_rank"]) == 2 and all(n == 3 for n in state["images_per_rank"])  # 1 image × 3 iters each
    lines = (run / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["iter"] for x in lines] == [1, 2, 3]  # one writer: rank 0
    assert "2 processes" in capsys.readouterr().out


def test_each_torchrun_process_takes_its_own_gpu(monkeypatch):
    from engine.runtime.distributed import local_device

    monkeypatch.setenv("LOCAL_RANK", "3")
    assert local_device(torch.device("cuda")) == torch.device("cuda", 3)
    assert local_device(torch.device("cuda", 1)) == torch.device("cuda", 1)  # an explicit choice wins
    assert local_device(torch.device("cpu")) == torch.device("cpu")


def test_divergence_stops_clearly_and_keeps_the_last_good_checkpoint(data, tmp_path, capsys):
    from engine.solo.trainer import TrainingDivergedError

    run = tmp_path / "nan"
    train(data / "images", data / "coarse.json", run, cfg=TrainConfig(iters=2, size=128, checkpoint_every=1))
    with pytest.raises(TrainingDivergedError, match="last good"):
        train(data / "images", data / "coarse.json", run,
              cfg=TrainConfig(iters=6, size=128, lr=1e30, checkpoint_every=1), resume=True)
    _model, state = load_model(run / "checkpoint.pt")
    assert 2 <= state["step"] < 6  # stopped early; the checkpoint on disk is from before the blow-up
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    code = main(["train", str(data / "images"), "--masks", str(data / "coarse.json"), "--out", str(run),
                 "--iters", "6", "--size", "128", "--lr", "1e30", "--checkpoint-every", "1", "--resume"])
    assert code == 2 and "last good" in capsys.readouterr().err



def test_selftrain_stops_with_a_checkpoint_and_resume_finishes(data, tmp_path, capsys):
    """What the panel's Cancel / Resume do: a SIGINT stops training cleanly, --resume finishes it."""
    import os
    import signal

    from engine.cli.solo import stop_on_sigint
    from engine.selftrain.config import SelfTrainConfig
    from engine.selftrain.rounds import SelfTrainStopped, selftrain

    with stop_on_sigint() as should_stop:  # the first Ctrl-C only asks to stop
        assert not should_stop()
        os.kill(os.getpid(), signal.SIGINT)
        assert should_stop()
    assert "saving a checkpoint" in capsys.readouterr().err

    st = tmp_path / "st"
    events, seen = [], []

    def progress(i, n, info):
        seen.append((i, n))

    def stop():
        return sum(1 for _i, n in seen if n == 50) >= 2  # two training iterations done

    with pytest.raises(SelfTrainStopped, match="round 1"):
        selftrain(data / "images", st, config=SelfTrainConfig(rounds=1), train_cfg=TrainConfig(iters=50, size=128, checkpoint_every=1000),
                  say=lambda _t: None, progress=progress, should_stop=stop, events=events.append)
    assert events[0] == {"event": "phase", "round": 0, "rounds": 1, "phase": "freemask"}
    assert {"event": "round_done", "round": 0, "rounds": 1, "path": str(st / "round_0" / "coarse.json")} in events
    assert events[-1]["event"] == "stopped" and "checkpoint" in events[-1]["phase"]
    _model, state = load_model(st / "round_1" / "checkpoint.pt")
    assert state["step"] == 2 and not (st / "round_1" / "model.pt").exists()

    capsys.readouterr()
    args = ["selftrain", str(data / "images"), "--out", str(st), "--rounds", "1", "--iters", "5", "--size", "128",
            "--device", "cpu", "--progress", "json", "--resume"]
    assert main(args) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    steps = [e["done"] for e in lines if e["event"] == "progress" and e["phase"] == "train"]
    assert steps == [3, 4, 5]  # only the missing iterations run
    assert {"event": "round_done", "round": 1, "rounds": 1, "path": str(st / "round_1" / "predictions.json")} in lines
    assert lines[-1] == {"event": "done", "rounds": 1}
    assert main(["selftrain", str(tmp_path / "nothing"), "--out", str(tmp_path / "none"), "--resume"]) == 2


def test_mask_positive_cap_samples_a_subset_and_keeps_losses_finite(data):
    """The cap changes which positives the mask losses see, never the category loss."""
    from engine.solo.config import SoloConfig
    from engine.solo.data import load_training_set
    from engine.solo.model import SoloV2
    from engine.solo.targets import TargetConfig
    from engine.solo.train import compute_losses

    samples, _ = load_training_set(data / "images", data / "coarse.json", 128)
    batch = [s for s in samples if s.masks.shape[0] > 0][:2]
    torch.manual_seed(0)
    model = SoloV2(SoloConfig.cpu_small())
    x = torch.cat([model.backbone.preprocess(s.image.permute(1, 2, 0).numpy()) for s in batch])
    with torch.no_grad():
        outputs = model(x)
    tcfg = TargetConfig.from_head(model.cfg.head)
    every = compute_losses(outputs, batch, tcfg, TrainConfig(max_mask_positives=0), step=1000)
    again = compute_losses(outputs, batch, tcfg, TrainConfig(max_mask_positives=10_000), step=1000)
    one = compute_losses(outputs, batch, tcfg, TrainConfig(max_mask_positives=1), step=1000)
    assert torch.equal(every["mask"], again["mask"])  # a cap above the count keeps every positive
    assert torch.equal(every["category"], one["category"])
    assert torch.isfinite(one["mask"]) and not torch.equal(every["mask"], one["mask"])


def test_training_with_copy_paste_views_runs_and_saves(data, tmp_path):
    res = train(data / "images", data / "coarse.json", tmp_path / "cp",
                cfg=TrainConfig(iters=3, batch=2, size=128, copy_paste=1.0, checkpoint_every=100))
    assert res.iterations == 3 and all(v == v for v in res.last_losses.values())
    model, _state = load_model(res.model_path)
    assert model is not None
