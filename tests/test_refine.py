import torch

from engine.ops.guided_filter import box_mean, guided_filter


def test_box_mean_matches_brute_force():
    torch.manual_seed(0)
    x = torch.rand(2, 9, 11)
    r = 2
    out = box_mean(x, r)
    for c in range(2):
        for i in range(9):
            for j in range(11):
                win = x[c, max(0, i - r): i + r + 1, max(0, j - r): j + r + 1]
                assert torch.isclose(out[c, i, j], win.mean(), atol=1e-5)


def _edge_case():
    """An image with a sharp colour edge at x = 20 and a blurry mask whose edge sits at x ≈ 24."""
    h, w = 40, 40
    img = torch.zeros(3, h, w)
    img[0, :, :20] = 0.9
    img[2, :, 20:] = 0.8
    xs = torch.arange(w).float()
    soft = torch.sigmoid((24 - xs) / 4.0).expand(h, w).clone()
    return img, soft


def test_colour_guided_filter_snaps_edge_to_image_edge():
    img, soft = _edge_case()
    out = guided_filter(img, soft, radius=6, eps=1e-3)
    row = out[20]
    # the output jumps at the colour edge (x = 19 -> 20) where the blurry input barely changes
    assert row[19] - row[20] > 0.2 > soft[20, 19] - soft[20, 20]
    # inside the red region it stays high, just past the edge it is pulled down
    assert row[15] > 0.85 and row[21] < soft[20, 21] - 0.1


def test_grayscale_guide_and_flat_guide_acts_as_smoothing():
    img, soft = _edge_case()
    gray = img.mean(0, keepdim=True)
    out = guided_filter(gray, soft, radius=6)
    assert out.shape == soft.shape and out[20, 15] > out[20, 25]
    flat = torch.full((3, 40, 40), 0.5)
    smooth = guided_filter(flat, soft, radius=3)
    assert torch.allclose(smooth, box_mean(box_mean(soft[None], 3), 3)[0], atol=1e-3)


def test_filter_soft_matches_filtering_the_upsampled_map():
    """The per-mask fast path (low-res soft map straight to filter resolution) equals the slow one."""
    import torch.nn.functional as F

    from engine.ops.guided_filter import GuideStats

    torch.manual_seed(1)
    img = torch.rand(3, 96, 128)
    img[:, 30:70, 40:90] += 0.6
    img = img.clamp(0, 1)
    soft = torch.zeros(12, 16)
    soft[4:9, 5:11] = 1.0
    for max_side in (128, 64):  # full resolution, and the fast guided filter at half resolution
        stats = GuideStats.compute(img, radius=6, eps=1e-3, max_side=max_side)
        box = (16, 84, 24, 104)
        full = F.interpolate(soft[None, None], size=(96, 128), mode="bilinear", align_corners=False)[0, 0]
        slow = stats.filter(full)[box[0]:box[1], box[2]:box[3]]
        fast = stats.filter_soft(soft, box)
        assert fast.shape == slow.shape
        assert (fast - slow).abs().max() < 0.05, max_side
        assert ((fast >= 0.5) == (slow >= 0.5)).float().mean() > 0.99


def test_window_upsampling_matches_torch_interpolation():
    """The per-mask coefficient upsampling equals F.interpolate (integer factor, the aligned
    case) and grid_sample at the same positions (fractional factor)."""
    import numpy as np
    import torch.nn.functional as F

    from engine.ops.guided_filter import _upsample_window

    torch.manual_seed(2)
    for f in (2.0, 3.0, 2.5):
        coef = torch.rand(4, 17, 13)
        fbox = (5, 22, 3, 16)
        oy, ox = int(fbox[0] * f), int(fbox[2] * f)  # the window's first image pixel
        for box in ((oy, oy + int(17 * f), ox, ox + int(13 * f)), (oy + 7, oy + 30, ox + 2, ox + 21)):
            y0, y1, x0, x1 = box
            fast = torch.from_numpy(_upsample_window(coef.numpy(), fbox, box, f))
            if f.is_integer():
                k = int(f)
                up = F.interpolate(coef[None], scale_factor=k, mode="bilinear", align_corners=False)[0]
                ref = up[:, y0 - fbox[0] * k: y1 - fbox[0] * k, x0 - fbox[2] * k: x1 - fbox[2] * k]
            else:
                ys = ((torch.arange(y0, y1) + 0.5) / f - 0.5 - fbox[0]).clamp(0, 16) / 16 * 2 - 1
                xs = ((torch.arange(x0, x1) + 0.5) / f - 0.5 - fbox[2]).clamp(0, 12) / 12 * 2 - 1
                grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None].float()
                ref = F.grid_sample(coef[None], grid, mode="bilinear", align_corners=True)[0]
            assert fast.shape == ref.shape == (4, y1 - y0, x1 - x0)
            assert np.abs((fast - ref).numpy()).max() < 1e-5, f


def test_upsample_crop_matches_interpolate():
    import torch.nn.functional as F

    from engine.ops.guided_filter import upsample_crop

    torch.manual_seed(3)
    soft = torch.rand(12, 16)
    full = F.interpolate(soft[None, None], size=(60, 70), mode="bilinear", align_corners=False)[0, 0]
    for box in ((0, 60, 0, 70), (7, 33, 12, 51)):
        crop = upsample_crop(soft, (60, 70), box)
        assert torch.allclose(crop, full[box[0]:box[1], box[2]:box[3]], atol=1e-5)
