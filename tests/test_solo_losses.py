"""FreeSOLO losses on hand-made tensors: exact values where they are known, ordering where not."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from engine.solo.losses import (
    dice_loss,
    embedding_cosine_loss,
    focal_loss_positive_only,
    full_mask_loss,
    lab_color_similarity,
    pairwise_affinity_loss,
    projection_dice_loss,
    rgb_to_lab,
    sigmoid_focal_loss,
    warmup_factor,
    weak_mask_loss,
)


def _diamond(size: int = 9) -> torch.Tensor:
    """A diamond touching every row and column of its bounding box (so max-projections match)."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = size // 2
    return ((y - c).abs() + (x - c).abs() <= c).float()


def _in_canvas(mask: torch.Tensor, canvas: int = 16, offset: int = 3) -> torch.Tensor:
    out = torch.zeros(canvas, canvas)
    out[offset : offset + mask.shape[0], offset : offset + mask.shape[1]] = mask
    return out


def _two_colour_image(h: int = 8, w: int = 16, edge: int = 8) -> torch.Tensor:
    """Left of `edge` pure red, right pure blue: (1, 3, h, w) in [0, 1]."""
    img = torch.zeros(1, 3, h, w)
    img[0, 0, :, :edge] = 1.0
    img[0, 2, :, edge:] = 1.0
    return img


# --- Dice -------------------------------------------------------------------------------------


def test_dice_identical_is_zero_and_disjoint_is_one():
    a = torch.zeros(2, 8, 8)
    a[0, :4] = 1
    a[1, 2:6, 2:6] = 1
    b = torch.zeros(2, 8, 8)
    b[0, 4:] = 1
    b[1, :2] = 1
    assert torch.allclose(dice_loss(a, a), torch.zeros(2), atol=1e-5)
    assert torch.allclose(dice_loss(a, b), torch.ones(2), atol=1e-6)
    assert dice_loss(a, a).shape == (2,)
    assert full_mask_loss is dice_loss


def test_dice_partial_overlap_value():
    p = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])
    t = torch.tensor([[[0.0, 1.0, 1.0, 0.0]]])
    # 1 - 2*1 / (2 + 2)
    assert dice_loss(p, t).item() == pytest.approx(0.5, abs=1e-6)


def test_max_projection_cannot_tell_mask_from_its_box():
    mask = _in_canvas(_diamond())[None]
    box = _in_canvas(torch.ones(9, 9))[None]
    assert projection_dice_loss(mask, box, "max").item() == pytest.approx(0.0, abs=1e-5)
    assert dice_loss(mask, box).item() > 0.1
    assert projection_dice_loss(mask, box, "avg").item() > 0.01


def test_projection_dice_sums_both_axes_and_rejects_bad_mode():
    # prediction covers the right rows but the wrong columns: only the y-projection (over W) is off
    t = torch.zeros(1, 6, 6)
    t[0, 1:3, 0:2] = 1
    p = torch.zeros(1, 6, 6)
    p[0, 1:3, 4:6] = 1
    assert projection_dice_loss(p, t, "max").item() == pytest.approx(1.0, abs=1e-5)  # 1 (x) + 0 (y)
    with pytest.raises(ValueError):
        projection_dice_loss(p, t, "median")  # type: ignore[arg-type]


def test_weak_mask_loss_is_max_plus_alpha_avg():
    mask = _in_canvas(_diamond())[None].repeat(2, 1, 1)
    box = _in_canvas(torch.ones(9, 9))[None].repeat(2, 1, 1)
    avg = projection_dice_loss(mask, box, "avg")
    mx = projection_dice_loss(mask, box, "max")
    assert torch.allclose(weak_mask_loss(mask, box, alpha=0.1), mx + 0.1 * avg, atol=1e-6)
    assert torch.allclose(weak_mask_loss(mask, box, alpha=0.0), mx, atol=1e-6)
    assert torch.allclose(weak_mask_loss(mask, box, alpha=1.0), mx + avg, atol=1e-6)
    assert weak_mask_loss(mask, box, alpha=1.0)[0] > weak_mask_loss(mask, box, alpha=0.1)[0]


def test_mask_losses_have_finite_gradients_for_empty_masks():
    zeros = torch.zeros(3, 8, 8)
    some = torch.zeros(3, 8, 8)
    some[:, 2:5, 2:5] = 1
    for pred_val, target in ((zeros, zeros), (zeros, some), (some, zeros)):
        for fn in (
            dice_loss,
            lambda p, t: projection_dice_loss(p, t, "max"),
            lambda p, t: projection_dice_loss(p, t, "avg"),
            weak_mask_loss,
        ):
            pred = pred_val.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(fn(pred, target).sum(), pred)
            assert torch.isfinite(grad).all()
    # gradients through a sigmoid of very negative logits (empty prediction) are finite too
    logits = torch.full((2, 8, 8), -30.0, requires_grad=True)
    (g,) = torch.autograd.grad(weak_mask_loss(torch.sigmoid(logits), some[:2]).sum(), logits)
    assert torch.isfinite(g).all()


def test_weak_loss_gradient_grows_prediction_into_the_box():
    target = _in_canvas(_diamond())[None]
    logits = torch.full((1, 16, 16), -2.0, requires_grad=True)
    (g,) = torch.autograd.grad(weak_mask_loss(torch.sigmoid(logits), target).sum(), logits)
    inside = target[0] > 0
    assert (g[0][inside] < 0).any()  # descent raises logits inside the coarse mask


# --- Lab and colour similarity ---------------------------------------------------------------


def test_lab_of_white_and_red():
    img = torch.zeros(1, 3, 1, 2)
    img[0, :, 0, 0] = 1.0  # white
    img[0, 0, 0, 1] = 1.0  # red
    lab = rgb_to_lab(img)[0, :, 0]
    assert torch.allclose(lab[:, 0], torch.tensor([100.0, 0.0, 0.0]), atol=0.5)
    assert torch.allclose(lab[:, 1], torch.tensor([53.2, 80.1, 67.2]), atol=0.5)
    # uint8 input is read as 0..255
    assert torch.allclose(rgb_to_lab((img * 255).to(torch.uint8)), rgb_to_lab(img), atol=1e-4)
    # black is the origin
    assert torch.allclose(rgb_to_lab(torch.zeros(1, 3, 1, 1)).flatten(), torch.zeros(3), atol=1e-4)


def test_lab_matches_skimage():
    skcolor = pytest.importorskip("skimage.color")
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 5, 7, generator=g)
    ours = rgb_to_lab(img)[0].permute(1, 2, 0).numpy()
    ref = skcolor.rgb2lab(img[0].permute(1, 2, 0).double().numpy())
    assert abs(ours - ref).max() < 0.05


def test_color_similarity_shape_identity_and_edge():
    img = _two_colour_image()
    sim = lab_color_similarity(img, kernel=3, dilation=2)
    assert sim.shape == (1, 8, 8, 16)
    # away from the edge and the image border, every neighbour has the same colour
    assert torch.allclose(sim[0, :, 2:-2, 2:5], torch.ones(8, 4, 3), atol=1e-5)
    assert torch.allclose(sim[0, :, 2:-2, 11:14], torch.ones(8, 4, 3), atol=1e-5)
    # at column 7 (red) the right-hand neighbours at column 9 are blue: near zero
    assert sim[0, :, 4, 7].min() < 1e-3
    assert sim[0, :, 4, 7].max() == pytest.approx(1.0, abs=1e-5)
    # neighbours outside the image count as dissimilar
    assert sim[0, 0, 0, 0] == 0.0
    # a larger kernel gives K*K - 1 channels
    assert lab_color_similarity(img, kernel=5, dilation=1).shape == (1, 24, 8, 16)


# --- Pairwise affinity ------------------------------------------------------------------------


def test_pairwise_loss_prefers_masks_that_follow_colour_edges():
    img = _two_colour_image()
    sim = lab_color_similarity(img)
    box = torch.ones(2, 8, 16)
    logits = torch.full((2, 8, 16), -6.0)
    logits[0, :, :8] = 6.0  # boundary on the colour edge
    logits[1, :, :4] = 6.0  # boundary inside the red region
    loss = pairwise_affinity_loss(logits, sim.expand(2, -1, -1, -1), box)
    assert loss.shape == (2,)
    assert loss[0] < 0.01
    assert loss[1] > 5 * loss[0] and loss[1] > 0.1


def test_pairwise_loss_value_on_uniform_logits():
    sim = lab_color_similarity(torch.full((1, 3, 6, 6), 0.5))
    logits = torch.zeros(1, 6, 6)  # p = 0.5 everywhere -> P(same) = 0.5
    loss = pairwise_affinity_loss(logits, sim, torch.ones(1, 6, 6))
    assert loss.item() == pytest.approx(math.log(2.0), abs=1e-5)


def test_pairwise_loss_zero_outside_box_and_threshold():
    img = _two_colour_image()
    sim = lab_color_similarity(img)
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(1, 8, 16, generator=g) * 3).requires_grad_(True)
    empty_box = torch.zeros(1, 8, 16)
    loss = pairwise_affinity_loss(logits, sim, empty_box)
    assert loss.item() == 0.0
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert (grad == 0).all()
    # a small box: pixels further than `dilation` from it get no gradient
    box = torch.zeros(1, 8, 16)
    box[0, 3:5, 3:5] = 1
    (grad,) = torch.autograd.grad(pairwise_affinity_loss(logits, sim, box).sum(), logits)
    reach = F.max_pool2d(box[None], kernel_size=5, stride=1, padding=2)[0]
    assert (grad[reach == 0] == 0).all()
    assert (grad[box > 0] != 0).any()
    # a threshold above every similarity removes all pairs
    assert pairwise_affinity_loss(logits, sim, torch.ones(1, 8, 16), threshold=1.1).item() == 0.0


def test_pairwise_loss_stable_for_saturated_logits():
    sim = lab_color_similarity(torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(2)), dilation=1)
    stripes = torch.tensor([1e4, -1e4]).repeat(3).expand(6, 6)  # alternating columns
    logits = stripes[None].repeat(2, 1, 1).requires_grad_(True)
    loss = pairwise_affinity_loss(logits, sim, torch.ones(2, 6, 6), threshold=0.0, dilation=1)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert (loss > 100).all()  # confident disagreement between neighbours is heavily penalised


def test_pairwise_loss_rejects_wrong_similarity_shape():
    with pytest.raises(ValueError):
        pairwise_affinity_loss(torch.zeros(2, 4, 4), torch.ones(1, 8, 4, 4), torch.ones(2, 4, 4))


def test_warmup_factor():
    assert warmup_factor(0) == 0.0
    assert warmup_factor(250) == pytest.approx(0.25)
    assert warmup_factor(1000) == 1.0
    assert warmup_factor(5000) == 1.0
    assert warmup_factor(5, warmup_iters=10) == pytest.approx(0.5)
    assert warmup_factor(5, warmup_iters=0) == 1.0


# --- Focal loss -------------------------------------------------------------------------------


def _focal_reference(x: float, t: float, alpha: float = 0.25, gamma: float = 2.0) -> float:
    p = 1.0 / (1.0 + math.exp(-x))
    if t == 1.0:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


def test_focal_loss_matches_brute_force():
    xs = [-3.0, -0.5, 0.0, 0.7, 2.5, 4.0]
    ts = [0.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    logits = torch.tensor(xs).view(2, 3)
    targets = torch.tensor(ts).view(2, 3)
    per = sigmoid_focal_loss(logits, targets, reduction="none")
    ref = torch.tensor([_focal_reference(x, t) for x, t in zip(xs, ts)]).view(2, 3)
    assert torch.allclose(per, ref, atol=1e-6)
    assert sigmoid_focal_loss(logits, targets).item() == pytest.approx(ref.sum().item(), abs=1e-5)
    assert sigmoid_focal_loss(logits, targets, reduction="mean").item() == pytest.approx(ref.mean().item(), abs=1e-6)
    ref_g1 = sum(_focal_reference(x, t, 0.5, 1.0) for x, t in zip(xs, ts))
    assert sigmoid_focal_loss(logits, targets, alpha=0.5, gamma=1.0).item() == pytest.approx(ref_g1, abs=1e-5)
    with pytest.raises(ValueError):
        sigmoid_focal_loss(logits, targets, reduction="max")  # type: ignore[arg-type]


def test_focal_loss_weights_and_positive_only():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    targets = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    per = sigmoid_focal_loss(logits, targets, reduction="none")
    w = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    expected = (per[0, 1] + per[1, 0]).item()
    assert sigmoid_focal_loss(logits, targets, weights=w).item() == pytest.approx(expected, abs=1e-6)
    pos = focal_loss_positive_only(logits, targets)
    assert pos.item() == pytest.approx((per[0, 1] + per[1, 1]).item(), abs=1e-6)
    # changing negatives' logits does not change the positive-only loss
    logits2 = logits.clone()
    logits2[targets == 0] = 10.0
    assert focal_loss_positive_only(logits2, targets).item() == pytest.approx(pos.item(), abs=1e-6)
    assert sigmoid_focal_loss(logits2, targets).item() > sigmoid_focal_loss(logits, targets).item()


# --- Embedding --------------------------------------------------------------------------------


def test_embedding_cosine_loss():
    a = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0], [1.0, 0.0, 0.0]])
    b = torch.stack([a[0] * 4.0, -a[1], torch.tensor([0.0, 1.0, 0.0])])
    loss = embedding_cosine_loss(a, b)
    assert torch.allclose(loss, torch.tensor([0.0, 2.0, 1.0]), atol=1e-6)
    z = torch.zeros(1, 3, requires_grad=True)
    (g,) = torch.autograd.grad(embedding_cosine_loss(z, a[:1]).sum(), z)
    assert torch.isfinite(g).all()


# --- Autocast ---------------------------------------------------------------------------------


def test_everything_runs_under_bf16_autocast():
    g = torch.Generator().manual_seed(3)
    n, h, w = 3, 12, 12
    feats = torch.randn(n, 8, h, w, generator=g)
    conv = torch.nn.Conv2d(8, 1, 1)
    img = torch.rand(1, 3, h, w, generator=g)
    target = torch.zeros(n, h, w)
    target[:, 3:8, 2:9] = 1
    box = target.clone()
    cls_targets = (torch.rand(2, 1, 5, 5, generator=g) > 0.8).float()
    emb_target = torch.randn(n, 16, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(feats)[:, 0]  # bf16 under autocast
        assert logits.dtype == torch.bfloat16
        probs = torch.sigmoid(logits)
        sim = lab_color_similarity(img).expand(n, -1, -1, -1)
        cls_logits = conv(torch.randn(2, 8, 5, 5, generator=g))
        emb = F.linear(torch.randn(n, 8, generator=g), torch.randn(16, 8, generator=g))
        outs = [
            dice_loss(probs, target),
            projection_dice_loss(probs, target, "max"),
            projection_dice_loss(probs, target, "avg"),
            weak_mask_loss(probs, target),
            pairwise_affinity_loss(logits, sim, box),
            sigmoid_focal_loss(cls_logits, cls_targets),
            focal_loss_positive_only(cls_logits, cls_targets),
            embedding_cosine_loss(emb, emb_target),
            rgb_to_lab(img),
        ]
        total = sum(o.sum() for o in outs[:-1])
    for o in outs:
        assert torch.isfinite(o).all()
        assert o.dtype == torch.float32
    assert torch.allclose(outs[-1], rgb_to_lab(img))  # Lab stays full precision under autocast
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())
