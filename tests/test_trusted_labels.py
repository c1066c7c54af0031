"""Trusted labels (a person's corrections) in training and self-training."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.data.synthetic import write_synthetic_dataset
from engine.io.coco import build_coco_dataset, load_image_results, write_coco
from engine.runtime.distributed import DistInfo
from engine.solo.config import TrainConfig
from engine.solo.data import load_training_set
from engine.solo.train import build_trainer
from engine.structures import IGNORE_KEY, ImageResult, InstanceMask

SIZE = 64


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("trusted")
    images, gt = write_synthetic_dataset(root, 3, seed=8, size=(SIZE, SIZE), kind="cartoon")
    results = load_image_results(gt)
    names = list(results)
    # pseudo-labels: every mask of image 0 marked ignore, image 2 left out
    pseudo = []
    for name in names[:2]:
        res = results[name]
        insts = [InstanceMask(m.mask, 0.5, extra={IGNORE_KEY: 1} if name == names[0] else {}) for m in res.instances]
        pseudo.append(ImageResult(name, SIZE, SIZE, insts))
    write_coco(root / "pseudo.json", build_coco_dataset(pseudo))
    corrected = np.zeros((SIZE, SIZE), bool)
    corrected[5:25, 5:25] = True
    trusted = [ImageResult(names[0], SIZE, SIZE, [InstanceMask(corrected, 1.0)]),
               ImageResult(names[2], SIZE, SIZE, [InstanceMask(corrected, 1.0)])]
    write_coco(root / "trusted.json", build_coco_dataset(trusted))
    return images, root, names


def test_trusted_images_take_their_masks_from_the_labels(data):
    images, root, names = data
    samples, problems = load_training_set(images, root / "pseudo.json", SIZE, trusted_json=root / "trusted.json")
    assert problems == []
    by_name = {s.file_name: s for s in samples}
    assert set(by_name) == set(names)  # image 2 is only in the trusted file, and takes part
    for name in (names[0], names[2]):
        s = by_name[name]
        assert s.trusted and s.ignore is None and s.masks.shape[0] == 1  # complete: the rest is background
        assert bool(s.masks[0, 10, 10]) and not bool(s.masks[0, 40, 40])
    assert not by_name[names[1]].trusted


def test_trusted_images_are_drawn_more_often(data, tmp_path):
    images, root, names = data
    samples, _ = load_training_set(images, root / "pseudo.json", SIZE, trusted_json=root / "trusted.json")
    cfg = TrainConfig(batch=2, size=SIZE, copy_paste=0.0, trusted_weight=5.0)
    trainer = build_trainer(samples, tmp_path, cfg, None, torch.device("cpu"), DistInfo(), False)
    counts = Counter()
    for _ in range(150):
        batch, _feats = trainer.sample()
        counts.update(s.file_name for s in batch)
    untrusted = counts[names[1]]
    assert counts[names[0]] > 2.5 * untrusted and counts[names[2]] > 2.5 * untrusted  # 5x expected


def test_selftrain_records_the_trusted_labels_of_each_round(data, tmp_path, capsys):
    images, root, _names = data
    run = tmp_path / "st"
    code = main(["selftrain", str(images), "--out", str(run), "--rounds", "1", "--iters", "4", "--size", str(SIZE),
                 "--device", "cpu", "--labels", str(root / "trusted.json")])
    assert code == 0, capsys.readouterr().err
    assert json.loads((run / "round_1" / "trusted.json").read_text()) == json.loads((root / "trusted.json").read_text())
    capsys.readouterr()
    code = main(["train", str(images), "--masks", str(root / "pseudo.json"), "--out", str(tmp_path / "t"), "--iters", "2",
                 "--size", str(SIZE), "--device", "cpu", "--labels", str(root / "trusted.json"), "--trusted-weight", "2"])
    assert code == 0, capsys.readouterr().err
    state = torch.load(tmp_path / "t" / "model.pt", weights_only=True)
    assert state["train_config"]["trusted_weight"] == 2.0


def test_more_rounds_on_a_finished_run_keep_each_rounds_labels(data, tmp_path, capsys):
    """The panel's loop: a finished run gets one more round with new corrections; every round keeps its
    model, predictions and the trusted labels it trained with, and the summary names them."""
    from engine.selftrain.layout import RunLayout

    images, root, names = data
    run = RunLayout(tmp_path / "st")
    args = ["selftrain", str(images), "--out", str(run.root), "--iters", "3", "--size", str(SIZE), "--device", "cpu"]
    assert main(args + ["--rounds", "1"]) == 0, capsys.readouterr().err
    assert run.latest_model() == 1 and run.unfinished_round() is None
    first = {p: p.read_bytes() for p in (run.model(1), run.predictions(1))}
    later = np.zeros((SIZE, SIZE), bool)
    later[30:50, 30:50] = True
    write_coco(run.corrections(2), build_coco_dataset([ImageResult(names[1], SIZE, SIZE, [InstanceMask(later, 1.0)])]))
    assert main(args + ["--rounds", "2", "--resume", "--labels", str(run.corrections(2))]) == 0, capsys.readouterr().err
    assert {p: p.read_bytes() for p in first} == first  # round 1 was kept, not retrained
    assert not run.trusted(1).exists()
    assert json.loads(run.trusted(2).read_text()) == json.loads(run.corrections(2).read_text())
    assert run.model(2).is_file() and run.predictions(2).is_file() and run.latest_model() == 2
    rows = json.loads(run.summary().read_text())
    assert [(r["round"], r["trusted"]) for r in rows] == [(0, ""), (1, ""), (2, "round_2/trusted.json")]


def test_a_resumed_round_keeps_the_labels_it_started_with(tmp_path):
    """Resuming a stopped round without --labels (the panel's Resume) still trains with the labels it
    started with; new labels given on a resume do not replace them either."""
    from engine.selftrain.config import SelfTrainConfig
    from engine.selftrain.layout import RunLayout
    from engine.selftrain.rounds import _record_trusted, _Run
    from engine.solo.config import TrainConfig

    layout = RunLayout(tmp_path / "run")

    def run(labels):
        return _Run(tmp_path, layout, SelfTrainConfig(), TrainConfig(), None, "cpu", print, None, None, None, labels)

    assert _record_trusted(run(None), 2) is None
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text('{"first": 1}')
    second.write_text('{"second": 2}')
    layout.round_dir(2).mkdir(parents=True)
    assert _record_trusted(run(first), 2) == layout.trusted(2)  # the round starts: its copy is written
    assert _record_trusted(run(None), 2) == layout.trusted(2)  # resumed without --labels
    assert _record_trusted(run(second), 2) == layout.trusted(2)
    assert layout.trusted(2).read_text() == first.read_text()


def test_run_layout_knows_unfinished_rounds(tmp_path):
    from engine.selftrain.layout import RunLayout

    run = RunLayout(tmp_path / "run")
    assert not run.has_run() and run.unfinished_round() is None and run.latest_model() is None
    run.round_dir(0).mkdir(parents=True)
    assert run.has_run() and run.unfinished_round() == 0
    run.coarse().write_text("[]")
    run.round_dir(1).mkdir()
    assert run.unfinished_round() == 1 and run.latest_model() is None  # round 1 was stopped in training
    run.predictions(1).write_text("[]")
    run.model(1).write_bytes(b"")
    assert run.unfinished_round() is None and run.latest_model() == 1
    assert run.corrections(2).parent.parent == run.root and run.ranking(1).parent == run.round_dir(1)


def test_export_backbone_writes_the_trained_backbone(data, tmp_path, capsys):
    """With --train-backbone the backbone learns, is saved with the model and exported in its own layout."""
    from engine.backbones import build_backbone
    from engine.freemask.features import FeatureConfig, FeatureExtractor

    images, root, _names = data
    run = tmp_path / "run"
    code = main(["train", str(images), "--masks", str(root / "pseudo.json"), "--out", str(run), "--iters", "3",
                 "--size", str(SIZE), "--device", "cpu", "--train-backbone", "--lr", "0.01"])
    assert code == 0, capsys.readouterr().err
    out = tmp_path / "backbone.pth"
    assert main(["export-backbone", str(run / "model.pt"), str(out)]) == 0
    exported = torch.load(out, weights_only=True)
    pretrained = build_backbone("efficientnet-lite0").state_dict()
    assert exported.keys() == pretrained.keys()
    changed = [k for k in exported if exported[k].dtype.is_floating_point and not torch.equal(exported[k], pretrained[k])]
    assert changed  # trained, not the pretrained weights
    feats = FeatureExtractor(FeatureConfig(backbone=str(out)), device="cpu").extract(np.zeros((64, 64, 3), np.uint8))
    assert feats.keys.shape[0] > 0
    assert main(["export-backbone", str(run / "model.pt"), str(out)]) == 2  # no silent overwrite


def test_flip_disagreement_formula():
    from engine.selftrain.uncertainty import flip_disagreement

    a = np.zeros((20, 20), bool)
    a[2:8, 2:8] = True
    b = np.zeros((20, 20), bool)
    b[12:18, 12:18] = True
    same = [InstanceMask(a, 0.9)]
    assert flip_disagreement(same, [InstanceMask(a.copy(), 0.8)]) == pytest.approx(0.0)
    assert flip_disagreement(same, [InstanceMask(b, 0.8)]) == pytest.approx(1.0)
    assert flip_disagreement([], []) == 1.0
    half = np.zeros((20, 20), bool)
    half[2:8, 2:5] = True  # IoU 0.5 with a
    assert flip_disagreement(same, [InstanceMask(half, 0.9)]) == pytest.approx(0.5)


def test_next_to_fix_ranks_every_image(data, tmp_path, capsys):
    images, root, names = data
    run = tmp_path / "run"
    assert main(["train", str(images), "--masks", str(root / "pseudo.json"), "--out", str(run), "--iters", "2",
                 "--size", str(SIZE), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["next-to-fix", str(run / "model.pt"), str(images), "--json", str(tmp_path / "rank.json"),
                 "--device", "cpu"]) == 0
    rows = json.loads((tmp_path / "rank.json").read_text())
    assert sorted(r["file_name"] for r in rows) == sorted(names)
    values = [r["uncertainty"] for r in rows]
    assert values == sorted(values, reverse=True) and all(0.0 <= v <= 1.0 for v in values)
    assert "| 1 |" in capsys.readouterr().out
    # a stack is ranked plane by plane, named as the panel names planes (its Next image to fix shows them)
    import tifffile
    from PIL import Image

    stacks = tmp_path / "stacks"
    stacks.mkdir()
    planes = np.stack([np.asarray(Image.open(images / n).convert("L")) for n in names[:2]])
    tifffile.imwrite(stacks / "movie.tif", planes, imagej=True, metadata={"axes": "TYX"})
    assert main(["next-to-fix", str(run / "model.pt"), str(stacks), "--json", str(tmp_path / "planes.json"),
                 "--device", "cpu"]) == 0
    assert sorted(r["file_name"] for r in json.loads((tmp_path / "planes.json").read_text())) == [
        "movie.tif[t=0]", "movie.tif[t=1]"]
