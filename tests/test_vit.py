"""DINO and DINOv2 ViTs load from checkpoints in their released key layouts (randomly initialised here,
no network) and feed Free Mask; a URL with its sha256 is downloaded once into the cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.backbones import BackboneError, build_backbone
from engine.backbones.vit import ViT, vit_config_from_state
from engine.freemask.features import FeatureConfig, FeatureExtractor
from engine.freemask.postprocess import FreeMaskParams, postprocess


def released_state(dim: int, patch: int, depth: int, pos_side: int, *, dinov2: bool = False, registers: int = 0,
                   device: str = "cpu") -> dict[str, torch.Tensor]:
    """Keys and shapes as in the released DINO (dino_vits16_pretrain.pth, ...) and DINOv2
    (dinov2_vits14_pretrain.pth, ...) backbone checkpoints, with random values."""
    g = torch.Generator().manual_seed(dim + patch + depth)

    def r(*shape):
        if device == "meta":
            return torch.empty(*shape, device="meta")
        return torch.randn(*shape, generator=g) * 0.02

    s = {"cls_token": r(1, 1, dim), "pos_embed": r(1, 1 + pos_side * pos_side, dim),
         "patch_embed.proj.weight": r(dim, 3, patch, patch), "patch_embed.proj.bias": r(dim),
         "norm.weight": torch.ones(dim, device=device), "norm.bias": r(dim)}
    if dinov2:
        s["mask_token"] = r(1, dim)
    if registers:
        s["register_tokens"] = r(1, registers, dim)
    for i in range(depth):
        b = f"blocks.{i}."
        s |= {b + "norm1.weight": torch.ones(dim, device=device), b + "norm1.bias": r(dim),
              b + "attn.qkv.weight": r(3 * dim, dim), b + "attn.qkv.bias": r(3 * dim),
              b + "attn.proj.weight": r(dim, dim), b + "attn.proj.bias": r(dim),
              b + "norm2.weight": torch.ones(dim, device=device), b + "norm2.bias": r(dim),
              b + "mlp.fc1.weight": r(4 * dim, dim), b + "mlp.fc1.bias": r(4 * dim),
              b + "mlp.fc2.weight": r(dim, 4 * dim), b + "mlp.fc2.bias": r(dim)}
        if dinov2:
            s |= {b + "ls1.gamma": r(dim), b + "ls2.gamma": r(dim)}
    return s


@pytest.mark.parametrize(("name", "dim", "patch", "pos", "dinov2"), [
    ("dino_vits8", 384, 8, 28, False), ("dino_vits16", 384, 16, 14, False),
    ("dino_vitb8", 768, 8, 28, False), ("dino_vitb16", 768, 16, 14, False),
    ("dinov2_vits14", 384, 14, 37, True), ("dinov2_vitb14", 768, 14, 37, True),
])
def test_released_layouts_are_recognised(name, dim, patch, pos, dinov2):
    cfg = vit_config_from_state(released_state(dim, patch, 12, pos, dinov2=dinov2, device="meta"), name)
    assert (cfg.dim, cfg.patch, cfg.depth, cfg.pos_grid, cfg.layerscale) == (dim, patch, 12, (pos, pos), dinov2)
    assert cfg.heads == dim // 64 and cfg.mlp_hidden == 4 * dim


@pytest.mark.parametrize(("patch", "pos", "dinov2", "registers"), [(16, 14, False, 0), (8, 28, False, 0),
                                                                    (14, 37, True, 0), (14, 37, True, 4)])
def test_checkpoints_load_and_give_token_maps_at_any_size(tmp_path, patch, pos, dinov2, registers):
    state = released_state(384, patch, 2, pos, dinov2=dinov2, registers=registers)
    path = tmp_path / "vit.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in state.items()}}, path)  # as DINO saves its teacher
    model = build_backbone(str(path))
    assert isinstance(model, ViT) and model.cfg.registers == registers
    x = torch.randn(1, 3, 70, 90)  # not a multiple of the patch, not the training grid
    out = model(x, ["tokens", "keys"])
    side = (-(-70 // patch), -(-90 // patch))
    assert out["tokens"].shape == (1, 384, *side) and out["keys"].shape == (1, 384, *side)
    assert torch.isfinite(out["keys"]).all()


def test_keys_are_the_last_attention_layers_keys(tmp_path):
    """The keys level equals the last block's qkv key part, computed by hand from the weights."""
    state = released_state(128, 16, 2, 14)
    model = ViT.from_state_dict(state)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x, ["keys"])["keys"]
        tokens = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
        pos = F.interpolate(state["pos_embed"][:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2), size=(4, 4),
                            mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 16, -1)
        seq = torch.cat([state["cls_token"] + state["pos_embed"][:, :1], tokens + pos], dim=1)
        seq, _ = model.blocks[0](seq)
        normed = F.layer_norm(seq, (128,), state["blocks.1.norm1.weight"], state["blocks.1.norm1.bias"], 1e-6)
        k = (normed @ state["blocks.1.attn.qkv.weight"].T + state["blocks.1.attn.qkv.bias"])[..., 128:256]
    torch.testing.assert_close(out, k[:, 1:].transpose(1, 2).reshape(1, 128, 4, 4), rtol=1e-4, atol=1e-5)


def test_free_mask_runs_on_a_vit(tmp_path, photo_sample):
    path = tmp_path / "dino.pth"
    torch.save(released_state(384, 16, 2, 14), path)
    ex = FeatureExtractor(FeatureConfig(backbone=str(path)), device="cpu")
    assert ex.config.levels == ("keys",)  # the ViT's own level, recorded in the cache key
    feats = ex.extract(photo_sample[0])
    assert feats.keys.shape[1:] == (24, 24)  # the stride-8 key grid of a 192² image
    result = postprocess(feats, FreeMaskParams(), photo_sample[0])
    assert isinstance(result.instances, list)


def test_backbone_from_a_url_with_its_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("FREESOLO_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "published" / "dino_vits16.pth"
    src.parent.mkdir()
    torch.save(released_state(384, 16, 1, 14), src)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    model = build_backbone(f"{src.as_uri()}#sha256={sha}")
    assert isinstance(model, ViT)
    assert (tmp_path / "cache" / "weights" / "dino_vits16.pth").is_file()
    src.unlink()  # cached: no second download
    assert isinstance(build_backbone(f"{src.as_uri()}#sha256={sha}"), ViT)
    with pytest.raises(BackboneError, match="checksum|could not download"):
        build_backbone(f"{(tmp_path / 'other.pth').as_uri()}#sha256={'0' * 64}")


def test_a_truncated_vit_checkpoint_is_one_clear_error(tmp_path):
    state = released_state(384, 16, 2, 14)
    del state["blocks.1.mlp.fc2.bias"]
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(BackboneError, match="cut.pth"):
        build_backbone(str(tmp_path / "cut.pth"))
    bad = released_state(384, 16, 1, 14)
    bad["pos_embed"] = torch.zeros(1, 1 + 15, 384)
    torch.save(bad, tmp_path / "odd.pth")
    with pytest.raises(BackboneError, match="square"):
        build_backbone(str(tmp_path / "odd.pth"))
