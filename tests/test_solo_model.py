"""SOLOv2 model, config and inference: real Lite0 backbone for shapes, hand-built outputs for inference."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.backbones.registry import build_backbone
from engine.solo.config import HeadConfig, InferenceConfig, MaskBranchConfig, SoloConfig
from engine.solo.model import SoloOutputs, SoloV2, dynamic_masks
from engine.solo.postprocess import point_nms, predict_instances


@pytest.fixture(scope="module")
def lite0():
    return build_backbone("efficientnet-lite0", "cpu")


@pytest.fixture(scope="module")
def small_model(lite0):
    torch.manual_seed(0)
    return SoloV2(SoloConfig.cpu_small(), lite0)


def _loss(out: SoloOutputs) -> torch.Tensor:
    return sum(c.sum() for c in out.categories) + sum(k.sum() for k in out.kernels) + out.mask_features.sum()


@pytest.mark.parametrize("preset", ["paper", "cpu_small"])
def test_output_shapes(lite0, preset):
    cfg = getattr(SoloConfig, preset)()
    model = SoloV2(cfg, lite0).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 256, 256))
    assert [c.shape for c in out.categories] == [(2, 1, s, s) for s in cfg.head.num_grids]
    assert [k.shape for k in out.kernels] == [(2, cfg.head.kernel_dim, s, s) for s in cfg.head.num_grids]
    assert out.mask_features.shape == (2, cfg.mask.out_dim, 64, 64)
    assert out.strides == cfg.head.strides
    assert len(model.fpn(list(model.backbone_features(torch.zeros(1, 3, 64, 64)).values()))) == (
        cfg.num_fpn_levels
    )


def test_odd_input_size(small_model):
    with torch.no_grad():
        out = small_model(torch.randn(1, 3, 300, 333))
    assert out.mask_features.shape[-2:] == (75, 84)  # the stride-4 backbone level's size


def test_forward_from_features_equals_forward(small_model):
    x = torch.randn(2, 3, 128, 160)
    small_model.eval()
    with torch.no_grad():
        direct = small_model(x)
        cached = small_model.forward_from_features(small_model.backbone_features(x))
    for a, b in zip(
        [*direct.categories, *direct.kernels, direct.mask_features],
        [*cached.categories, *cached.kernels, cached.mask_features],
        strict=True,
    ):
        assert torch.equal(a, b)
    with pytest.raises(KeyError, match="s32"):
        small_model.forward_from_features({"s4": torch.zeros(1, 24, 8, 8)})


def test_frozen_backbone_gets_no_gradient_and_keeps_eval_bn(lite0):
    torch.manual_seed(0)
    model = SoloV2(SoloConfig.cpu_small(), lite0).train()
    assert not model.backbone.training and model.head.training
    bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    _loss(model(torch.randn(2, 3, 96, 96))).backward()
    assert torch.equal(bn.running_mean, before)
    assert all(p.grad is None for p in model.backbone.parameters())
    for part in (model.fpn, model.head, model.mask_branch):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
    model.zero_grad(set_to_none=True)


def test_unfrozen_backbone_trains(lite0):
    backbone = copy.deepcopy(lite0)  # the shared one was frozen in place by other models
    cfg = SoloConfig.from_dict({**SoloConfig.cpu_small().to_dict(), "backbone": {"frozen": False}})
    model = SoloV2(cfg, backbone).train()
    assert model.backbone.training
    _loss(model(torch.randn(1, 3, 64, 64))).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


def test_dynamic_masks_is_a_1x1_conv():
    torch.manual_seed(0)
    kernels, feats = torch.randn(7, 16), torch.randn(16, 9, 11)
    expected = F.conv2d(feats[None], kernels[:, :, None, None])[0]
    assert torch.allclose(dynamic_masks(kernels, feats), expected, atol=1e-5)
    with pytest.raises(ValueError):
        dynamic_masks(torch.randn(3, 8), feats)


def test_category_bias_uses_prior(small_model):
    p = SoloConfig.cpu_small().head.prior_prob
    bias = small_model.head.cate_pred.bias
    assert torch.allclose(bias, torch.full_like(bias, -math.log((1 - p) / p)))
    with torch.no_grad():
        out = small_model.eval()(torch.zeros(1, 3, 64, 64))
    # tiny weights: every cell starts near the prior objectness
    assert abs(out.categories[0].sigmoid().mean().item() - p) < 0.005


def test_point_nms_keeps_local_maxima_only():
    heat = torch.tensor([[0.1, 0.9, 0.8], [0.2, 0.3, 0.1], [0.0, 0.1, 0.7]])[None, None]
    kept = point_nms(heat)[0, 0]
    assert kept[0, 1] == 0.9 and kept[2, 2] == 0.7
    assert kept[0, 2] == 0 and kept[1, 1] == 0 and kept[2, 1] == 0
    # SOLO's window is the cell and its up/left neighbours: a corner cell only meets itself
    assert kept[0, 0] == pytest.approx(0.1)


# ---------------------------------------------------------------- post-processing on hand-built outputs

def _square_outputs(
    cells: list[tuple[int, int, float, tuple[int, int, int, int]]],
    grid: int = 8,
    feat: int = 16,
    dim: int = 4,
) -> SoloOutputs:
    """Outputs whose mask feature has one channel per requested square; each cell's kernel picks its square.

    ``cells``: (row, col, category probability, (y0, y1, x0, x1) in mask-feature pixels).
    Inside a square the mask probability is sigmoid(4) ~ 0.982, outside sigmoid(-4).
    """
    cate = torch.full((1, 1, grid, grid), -20.0)
    kern = torch.zeros(1, dim, grid, grid)
    mf = torch.zeros(1, dim, feat, feat)
    mf[0, -1] = 1.0  # constant channel acting as a bias
    for c, (i, j, prob, (y0, y1, x0, x1)) in enumerate(cells):
        cate[0, 0, i, j] = math.log(prob / (1 - prob))
        mf[0, c, y0:y1, x0:x1] = 8.0
        kern[0, c, i, j] = 1.0
        kern[0, -1, i, j] = -4.0
    return SoloOutputs([cate], [kern], mf, strides=(8,))


def test_predict_instances_recovers_square_at_image_resolution():
    out = _square_outputs([(2, 5, 0.9, (4, 8, 8, 12))])  # feature 16x16 -> input 64x64
    # the image (100x200) was resized to 32x64 inside the padded 64x64 input
    found = predict_instances(out, 0, image_size=(100, 200), input_size=(32, 64), cfg=InferenceConfig())
    assert len(found) == 1
    inst = found[0]
    assert inst.source == "solo" and inst.extra == {"level": 0, "cell": [2, 5]}
    assert inst.mask.shape == (100, 200) and inst.mask.dtype == bool
    # square spans input rows 16..32 and cols 32..48 -> image rows 50..100, cols 100..150
    expected = np.zeros((100, 200), bool)
    expected[50:100, 100:150] = True
    iou = (inst.mask & expected).sum() / (inst.mask | expected).sum()
    assert iou > 0.9
    soft_inside = torch.sigmoid(torch.tensor(4.0)).item()
    assert inst.maskness == pytest.approx(soft_inside, abs=1e-4)
    assert inst.score == pytest.approx(0.9 * soft_inside, abs=1e-4)


def test_predict_instances_suppresses_duplicates_and_keeps_distinct():
    cells = [
        (2, 2, 0.9, (2, 8, 2, 8)),
        (4, 4, 0.8, (2, 8, 2, 7)),  # IoU 5/6 with the first: a duplicate
        (6, 6, 0.7, (10, 15, 10, 15)),
    ]
    out = _square_outputs(cells)
    found = predict_instances(out, 0, (64, 64), (64, 64), InferenceConfig(update_thr=0.3))
    assert [f.extra["cell"] for f in found] == [[2, 2], [6, 6]]
    # the duplicate survives a low update threshold, but Matrix NMS has decayed its score
    loose = predict_instances(out, 0, (64, 64), (64, 64), InferenceConfig(update_thr=0.01))
    assert [f.extra["cell"] for f in loose] == [[2, 2], [6, 6], [4, 4]]
    undecayed = 0.8 * loose[2].maskness
    assert loose[2].score == pytest.approx(undecayed * math.exp(-2.0 * (5 / 6) ** 2), rel=1e-3)
    assert [f.score for f in loose] == sorted((f.score for f in loose), reverse=True)


def test_predict_instances_filters():
    assert predict_instances(_square_outputs([]), 0, (64, 64), (64, 64), InferenceConfig()) == []
    below = _square_outputs([(2, 2, 0.05, (2, 8, 2, 8))])  # category below score_thr
    assert predict_instances(below, 0, (64, 64), (64, 64), InferenceConfig()) == []
    tiny = _square_outputs([(2, 2, 0.9, (2, 4, 2, 6))])  # 8 px at stride 4: not > level stride 8
    assert predict_instances(tiny, 0, (64, 64), (64, 64), InferenceConfig()) == []
    many = _square_outputs(
        [(1, 1, 0.9, (0, 4, 0, 4)), (3, 3, 0.8, (0, 4, 6, 10)), (5, 5, 0.7, (8, 12, 0, 4))]
    )
    assert len(predict_instances(many, 0, (64, 64), (64, 64), InferenceConfig())) == 3
    assert len(predict_instances(many, 0, (64, 64), (64, 64), InferenceConfig(max_per_image=2))) == 2


def test_predict_instances_on_real_model_runs(small_model):
    small_model.eval()
    with torch.no_grad():
        out = small_model(torch.randn(2, 3, 96, 128))
    found = predict_instances(out, 1, (48, 64), (96, 128), InferenceConfig(score_thr=0.0, update_thr=0.0))
    assert all(f.mask.shape == (48, 64) for f in found)
    assert len(found) <= 100


# ---------------------------------------------------------------- config

@pytest.mark.parametrize("preset", ["paper", "cpu_small"])
def test_config_round_trip(preset):
    cfg = getattr(SoloConfig, preset)()
    assert SoloConfig.from_dict(cfg.to_dict()) == cfg
    assert SoloConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_config_validation():
    with pytest.raises(ValueError, match="kernel_dim"):
        SoloConfig(mask=MaskBranchConfig(out_dim=128))
    with pytest.raises(ValueError, match="grids"):
        HeadConfig(num_grids=(40, 36))
    with pytest.raises(ValueError, match="unknown"):
        SoloConfig.from_dict({"head": {"num_grid": [3]}})
    paper = SoloConfig.paper()
    assert paper.head.num_grids == (40, 36, 24, 16, 12) and paper.num_fpn_levels == 5
    assert paper.inference.score_thr == 0.1 and paper.inference.max_per_image == 100
