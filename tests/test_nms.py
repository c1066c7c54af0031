import torch

from engine.ops.nms import mask_iou_matrix, matrix_nms


def _box(h0, h1, w0, w1, size=20):
    m = torch.zeros(size, size)
    m[h0:h1, w0:w1] = 1
    return m


def test_iou_matrix_known_values():
    a, b = _box(0, 10, 0, 10), _box(0, 10, 5, 15)
    iou = mask_iou_matrix(torch.stack([a, b]))
    assert torch.allclose(iou, torch.tensor([[1.0, 50 / 150], [50 / 150, 1.0]]))


def test_duplicate_is_suppressed_and_disjoint_kept():
    a = _box(0, 10, 0, 10)
    dup = _box(0, 10, 0, 9)  # IoU 0.9 with a
    far = _box(12, 20, 12, 20)
    scores = torch.tensor([0.8, 0.9, 0.7])  # duplicate scored highest, input order scrambled
    out = matrix_nms(torch.stack([a, dup, far]), scores, sigma=2.0)
    assert out[1] == scores[1]  # best mask untouched
    assert out[2] == scores[2]  # disjoint mask untouched
    expected = 0.8 * torch.exp(torch.tensor(-2.0 * 0.9**2))
    assert torch.isclose(out[0], expected, atol=1e-5)


def test_compensation_restores_mask_suppressed_by_a_suppressed_mask():
    # b is a near copy of a; c overlaps b but not a. c's decay is compensated by b's own decay.
    a = _box(0, 10, 0, 10)
    b = _box(0, 10, 1, 11)
    c = _box(0, 10, 9, 19)
    scores = torch.tensor([0.9, 0.8, 0.7])
    masks = torch.stack([a, b, c])
    out = matrix_nms(masks, scores, sigma=2.0)
    iou = mask_iou_matrix(masks)
    naive = 0.7 * torch.exp(-2.0 * iou[1, 2] ** 2) * torch.exp(-2.0 * iou[0, 2] ** 2)
    assert out[2] > naive


def test_linear_kernel_and_empty():
    a, b = _box(0, 10, 0, 10), _box(0, 10, 0, 5)
    out = matrix_nms(torch.stack([a, b]), torch.tensor([1.0, 0.5]), kernel="linear")
    assert torch.isclose(out[1], torch.tensor(0.5 * (1 - 0.5)))
    assert matrix_nms(torch.zeros(0, 4), torch.zeros(0)).numel() == 0
