"""Vision Transformers as released by DINO (ViT-S/8, S/16, B/8, B/16) and DINOv2 (ViT-S/14, B/14, ...).

Plain torch, loading the released checkpoints' keys as they are:
``cls_token``, ``pos_embed`` (1, 1 + g*g, D), ``patch_embed.proj.{weight,bias}``, per block
``blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`` and, for DINOv2,
``blocks.i.ls1.gamma`` / ``ls2.gamma`` (LayerScale), ``mask_token`` and optional
``register_tokens``; the final ``norm``. The width D, depth, patch size, LayerScale and registers
are read from the keys; heads = D / 64 (every released model).

Levels (stride = the patch size): ``tokens`` (the last layer's normalised patch tokens) and
``keys`` (the last attention layer's keys, the features CutLER's MaskCut cuts). Position
embeddings are interpolated (bicubic) to any input size; inputs are padded to a multiple of the
patch size and the padding's tokens dropped again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone, BackboneError, load_exact_state

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")
HEAD_DIM = 64
_IGNORED = ("mask_token", "head.weight", "head.bias")  # DINOv2's masking token; a classifier, if any


def is_vit_state(state: Mapping[str, torch.Tensor]) -> bool:
    return "patch_embed.proj.weight" in state and "pos_embed" in state and "cls_token" in state


@dataclass(frozen=True)
class ViTConfig:
    dim: int
    depth: int
    patch: int
    mlp_hidden: int
    layerscale: bool
    registers: int
    pos_grid: tuple[int, int]  # the token grid the position embeddings were trained on

    @property
    def heads(self) -> int:
        return max(1, self.dim // HEAD_DIM)


def vit_config_from_state(state: Mapping[str, torch.Tensor], source: str = "state dict") -> ViTConfig:
    proj = state["patch_embed.proj.weight"]
    if proj.ndim != 4 or proj.shape[2] != proj.shape[3]:
        raise BackboneError(f"{source}: patch_embed.proj.weight has shape {tuple(proj.shape)}, not (D, 3, p, p)")
    dim, patch = int(proj.shape[0]), int(proj.shape[2])
    depth = 1 + max((int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))), default=-1)
    if depth == 0:
        raise BackboneError(f"{source}: no transformer blocks (blocks.0.*) in the checkpoint")
    n_pos = int(state["pos_embed"].shape[1]) - 1
    side = math.isqrt(n_pos)
    if side * side != n_pos:
        raise BackboneError(f"{source}: pos_embed holds {n_pos} patch positions, not a square grid")
    registers = int(state["register_tokens"].shape[1]) if "register_tokens" in state else 0
    return ViTConfig(dim, depth, patch, int(state["blocks.0.mlp.fc1.weight"].shape[0]),
                     "blocks.0.ls1.gamma" in state, registers, (side, side))


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, keys (B, N, D)) of multi-head self-attention."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d)), k.transpose(1, 2).reshape(b, n, d)


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.attn = Attention(cfg.dim, cfg.heads)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(cfg.dim, cfg.mlp_hidden))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("fc2", nn.Linear(cfg.mlp_hidden, cfg.dim))
        self.ls1 = LayerScale(cfg.dim) if cfg.layerscale else nn.Identity()
        self.ls2 = LayerScale(cfg.dim) if cfg.layerscale else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, keys = self.attn(self.norm1(x))
        x = x + self.ls1(out)
        return x + self.ls2(self.mlp(self.norm2(x))), keys


class ViT(Backbone):
    """DINO / DINOv2 ViT feature extractor (levels ``tokens`` and ``keys`` at the patch stride)."""

    input_mean = (0.485, 0.456, 0.406)  # ImageNet, as both were trained
    input_std = (0.229, 0.224, 0.225)
    default_levels = ("keys",)

    def __init__(self, cfg: ViTConfig, name: str = "vit") -> None:
        super().__init__()
        self.name, self.cfg = name, cfg
        self.arch = f"ViT-{cfg.dim}d/{cfg.patch} ({cfg.depth} blocks)"
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, cfg.dim, cfg.patch, stride=cfg.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.pos_grid[0] * cfg.pos_grid[1], cfg.dim))
        if cfg.registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, cfg.registers, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.level_channels = {"tokens": cfg.dim, "keys": cfg.dim}
        self.level_strides = {"tokens": cfg.patch, "keys": cfg.patch}
        self.eval()

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], name: str = "vit", source: str = "state dict") -> "ViT":
        kept = {k: v for k, v in state.items() if k not in _IGNORED}
        return load_exact_state(cls(vit_config_from_state(state, source), name=name), kept, source, "ViT")

    def _positions(self, gh: int, gw: int) -> torch.Tensor:
        cls_pos, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        sh, sw = self.cfg.pos_grid
        if (gh, gw) != (sh, sw):
            grid = grid.reshape(1, sh, sw, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
            grid = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        return torch.cat([cls_pos, grid], dim=1)

    def forward(self, x: torch.Tensor, levels: Sequence[str]) -> dict[str, torch.Tensor]:
        wanted = self.check_levels(levels)
        p = self.cfg.patch
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (-w) % p, 0, (-h) % p))  # zeros: the mean colour after normalisation
        tokens = self.patch_embed.proj(x)
        gh, gw = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2)
        seq = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1) + self._positions(gh, gw)
        if self.cfg.registers:
            seq = torch.cat([seq[:, :1], self.register_tokens.expand(len(seq), -1, -1), seq[:, 1:]], dim=1)
        keys = seq
        for block in self.blocks:
            seq, keys = block(seq)
        skip = 1 + self.cfg.registers
        maps = {"tokens": self.norm(seq)[:, skip:], "keys": keys[:, skip:]}
        return {lvl: maps[lvl].transpose(1, 2).reshape(len(seq), -1, gh, gw) for lvl in wanted}
