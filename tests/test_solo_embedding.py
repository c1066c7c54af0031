"""FreeSOLO's semantic embedding branch: the student learns each mask's Free Mask query embedding."""

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.data.synthetic import label_map_to_masks, make_sample, sample_seed, write_synthetic_dataset
from engine.io.coco import build_coco_dataset, load_image_results, write_coco
from engine.solo.augment import copy_paste
from engine.solo.checkpoint import load_model
from engine.solo.config import SoloConfig, TrainConfig
from engine.solo.data import TrainSample, flip_sample, load_training_set
from engine.solo.model import SoloV2
from engine.solo.predict import inference_settings, predict_image
from engine.solo.targets import TargetConfig
from engine.solo.train import compute_losses, embedding_loss, train
from engine.structures import ImageResult

DIM = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """4 cartoon images; each true mask carries an 8-d 'query embedding' except the classical ones
    (every third mask), as a microscopy run of Free Mask + classical proposals writes them."""
    root = tmp_path_factory.mktemp("emb")
    write_synthetic_dataset(root, 4, seed=21, size=(128, 128), kind="cartoon")
    rng = np.random.default_rng(0)
    results = []
    for i in range(4):
        _img, labels = make_sample(sample_seed(21, i), (128, 128), kind="cartoon")
        masks = label_map_to_masks(labels, source="freemask")
        for k, m in enumerate(masks):
            if k % 3 == 2:
                m.source = "classical"
            else:
                m.extra["embedding"] = rng.normal(size=DIM).round(4).tolist()
        results.append(ImageResult(f"img_{i:04d}.png", 128, 128, masks))
    write_coco(root / "coarse.json", build_coco_dataset(results))
    return root


def _model(dim: int = DIM) -> SoloV2:
    base = SoloConfig.cpu_small()
    torch.manual_seed(0)
    return SoloV2(replace(base, head=replace(base.head, embedding_dim=dim)))


def test_samples_carry_each_masks_embedding_and_zero_rows_for_masks_without(data):
    samples, problems = load_training_set(data / "images", data / "coarse.json", 128, embedding_dim=DIM)
    coarse = load_image_results(data / "coarse.json")
    assert not problems and len(samples) == 4
    for s in samples:
        vectors = [m.extra.get("embedding") for m in coarse[s.file_name].instances]
        assert s.embeddings.shape == (s.masks.shape[0], DIM)
        have = s.embeddings.abs().sum(1) > 0
        assert have.tolist() == [v is not None for v in vectors]
        first = next(k for k, v in enumerate(vectors) if v is not None)
        assert torch.allclose(s.embeddings[first], torch.tensor(vectors[first]))
    plain, _ = load_training_set(data / "images", data / "coarse.json", 128)
    assert all(s.embeddings is None for s in plain)


def test_flips_and_pasted_objects_keep_their_embeddings(data):
    samples, _ = load_training_set(data / "images", data / "coarse.json", 128, embedding_dim=DIM)
    target, source = samples[0], samples[1]
    assert flip_sample(target).embeddings is target.embeddings
    view = copy_paste(target, source, random.Random(3))
    assert view.embeddings.shape == (view.masks.shape[0], DIM)
    pasted = view.embeddings[-1]
    # the last mask of the view is a pasted source object: its row is one of the source's rows
    assert any(torch.equal(pasted, row) for row in source.embeddings)


def test_the_loss_is_the_mean_cosine_distance_over_positive_cells_with_an_embedding(data):
    samples, _ = load_training_set(data / "images", data / "coarse.json", 128, embedding_dim=DIM)
    model = _model()
    feats = {k: torch.cat([v, v]) for k, v in model.backbone_features(
        model.backbone.preprocess(samples[0].image.permute(1, 2, 0).numpy())).items()}
    outputs = model.forward_from_features(feats)
    assert [tuple(e.shape) for e in outputs.embeddings] == [(2, DIM, s, s) for s in model.cfg.head.num_grids]
    batch = [samples[0], samples[0]]
    tcfg = TargetConfig.from_head(model.cfg.head)
    from engine.solo.targets import batch_targets

    targets = batch_targets([s.masks for s in batch], (128, 128), tcfg)
    loss = embedding_loss(outputs, batch, targets)
    # the same number computed cell by cell
    terms = []
    for level, emb in enumerate(outputs.embeddings):
        s = emb.shape[-1]
        for b, cell, inst in zip(targets.batch_index[level], targets.positive_index[level],
                                 targets.instance_index[level]):
            want = batch[int(b)].embeddings[int(inst)]
            if want.abs().sum() > 0:
                got = emb[int(b), :, int(cell) // s, int(cell) % s]
                terms.append(1 - torch.nn.functional.cosine_similarity(got, want, dim=0))
    assert terms and torch.isclose(loss, torch.stack(terms).mean(), atol=1e-5)
    # trained into the total: the embedding predictor gets a gradient, and a weight of 0 adds no term
    losses = compute_losses(outputs, batch, tcfg, TrainConfig(embedding_weight=4.0), step=0)
    sum(losses.values()).backward()
    assert model.head.emb_pred.weight.grad.abs().sum() > 0
    assert "embedding" not in compute_losses(outputs, batch, tcfg, TrainConfig(), step=0)


def test_masks_without_any_embedding_give_zero_loss_not_nan(data):
    samples, _ = load_training_set(data / "images", data / "coarse.json", 128, embedding_dim=DIM)
    blank = TrainSample(samples[0].file_name, samples[0].image, samples[0].masks, samples[0].weights,
                        samples[0].content, embeddings=torch.zeros_like(samples[0].embeddings))
    model = _model()
    x = model.backbone.preprocess(blank.image.permute(1, 2, 0).numpy())
    outputs = model(x)
    from engine.solo.targets import batch_targets

    targets = batch_targets([blank.masks], (128, 128), TargetConfig.from_head(model.cfg.head))
    loss = embedding_loss(outputs, [blank], targets)
    assert float(loss.detach()) == 0.0 and loss.requires_grad


def test_training_learns_the_embeddings_and_predictions_carry_them(data, tmp_path):
    cfg = TrainConfig(iters=40, batch=2, size=128, embedding_weight=4.0, copy_paste=0.0, checkpoint_every=40)
    res = train(data / "images", data / "coarse.json", tmp_path / "run", cfg=cfg)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    first, last = np.mean([r["embedding"] for r in log[:5]]), np.mean([r["embedding"] for r in log[-5:]])
    assert last < first  # the predicted embeddings turn towards their masks' embeddings
    model, state = load_model(res.model_path)
    assert model.cfg.head.embedding_dim == DIM and state["train_config"]["embedding_weight"] == 4.0
    size, inference, scale = inference_settings(model, state, score_thr=0.0)
    image, _labels = make_sample(sample_seed(21, 0), (128, 128), kind="cartoon")
    found = predict_image(model, image, size, inference, scale=scale)
    assert found and all(len(m.extra["embedding"]) == DIM for m in found)
    assert all(abs(np.linalg.norm(m.extra["embedding"]) - 1) < 1e-3 for m in found)


def test_cli_refuses_the_branch_without_embeddings_in_the_masks(data, tmp_path, capsys):
    plain = load_image_results(data / "coarse.json")
    for res in plain.values():
        for m in res.instances:
            m.extra.pop("embedding", None)
    write_coco(tmp_path / "plain.json", build_coco_dataset(list(plain.values())))
    code = main(["train", str(data / "images"), "--masks", str(tmp_path / "plain.json"), "--out",
                 str(tmp_path / "run"), "--iters", "2", "--size", "128", "--embedding-weight", "4", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code != 0 and "plain.json" in err and "embedding" in err
