"""Image loading and listing, with every bad input made on the fly."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from engine.io.images import (
    IMAGE_EXTENSIONS,
    ImageLoadError,
    NoImagesError,
    file_sha1,
    find_root,
    list_images,
    load_image,
    relative_name,
)


def _save(img: Image.Image, path: Path, **kw: object) -> Path:
    img.save(path, **kw)
    return path


def _check_rgb8(arr: np.ndarray, h: int, w: int) -> None:
    assert arr.dtype == np.uint8
    assert arr.shape == (h, w, 3)


# --------------------------------------------------------------------------- good files


def test_rgb_png_round_trip(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = _save(Image.fromarray(rgb), tmp_path / "a.png")
    out = load_image(path)
    _check_rgb8(out, 20, 30)
    np.testing.assert_array_equal(out, rgb)


def test_grayscale_8bit_kept_as_stored(tmp_path: Path) -> None:
    gray = np.tile(np.arange(40, 80, dtype=np.uint8), (16, 1))
    out = load_image(_save(Image.fromarray(gray, ), tmp_path / "g.png"))
    _check_rgb8(out, 16, 40)
    np.testing.assert_array_equal(out[..., 0], gray)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_16bit_png_is_stretched(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(1000, 3000, 64).astype(np.uint16), (16, 1))
    img = Image.fromarray(ramp)
    path = _save(img, tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    out = load_image(path)
    _check_rgb8(out, 16, 64)
    assert out[..., 0].min() == 0 and out[..., 0].max() == 255
    assert np.all(np.diff(out[0, :, 0].astype(int)) >= 0)  # monotone ramp stays monotone


def test_16bit_tiff_is_stretched(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(100, 4000, (32, 48), dtype=np.uint16)
    path = tmp_path / "deep.tif"
    tifffile.imwrite(path, data)
    out = load_image(path)
    _check_rgb8(out, 32, 48)
    assert out.max() == 255 and out.min() == 0
    # brighter input stays brighter
    hi, lo = np.unravel_index(data.argmax(), data.shape), np.unravel_index(data.argmin(), data.shape)
    assert out[hi][0] > out[lo][0]


def test_float_tiff_with_nan(tmp_path: Path) -> None:
    data = np.linspace(-1.0, 1.0, 40 * 40, dtype=np.float32).reshape(40, 40)
    data[0, 0] = np.nan
    path = tmp_path / "f.tiff"
    tifffile.imwrite(path, data)
    out = load_image(path)
    _check_rgb8(out, 40, 40)
    assert out[-1, -1, 0] == 255 and out[0, 1, 0] == 0
    assert out[0, 0, 0] == 0  # NaN maps to black, not garbage


def test_constant_float_tiff_is_zeros(tmp_path: Path) -> None:
    path = tmp_path / "const.tif"
    tifffile.imwrite(path, np.full((16, 16), 7.5, np.float32))
    out = load_image(path)
    _check_rgb8(out, 16, 16)
    assert not out.any()


def test_rgb_16bit_tiff_keeps_colour(tmp_path: Path) -> None:
    data = np.zeros((16, 16, 3), np.uint16)
    data[..., 0] = 60000
    data[..., 2] = 100
    path = tmp_path / "rgb16.tif"
    tifffile.imwrite(path, data, photometric="rgb")
    out = load_image(path)
    _check_rgb8(out, 16, 16)
    assert out[0, 0, 0] > 200 and out[0, 0, 2] < 50


def test_multichannel_tiff_uses_separate_channels(tmp_path: Path) -> None:
    data = np.zeros((2, 16, 24), np.uint16)
    data[0, :, :12] = 500
    data[1, :, 12:] = 9
    path = tmp_path / "two.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "CYX"})
    out = load_image(path)
    _check_rgb8(out, 16, 24)
    assert out[0, 0, 0] == 255 and out[0, 0, 1] == 0  # channel 0 -> red
    assert out[0, -1, 1] == 255 and out[0, -1, 0] == 0  # channel 1 -> green


def test_zstack_tiff_takes_first_plane(tmp_path: Path) -> None:
    data = np.zeros((3, 16, 16), np.uint8)
    data[0, :8] = 200
    data[1:] = 50
    path = tmp_path / "z.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZYX"})
    out = load_image(path)
    _check_rgb8(out, 16, 16)
    assert out[0, 0, 0] == 200 and out[-1, 0, 0] == 0


def test_rgba_composited_over_white(tmp_path: Path) -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 255  # red ...
    rgba[:5, :, 3] = 255  # ... opaque in the top half, transparent below
    out = load_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "cut.png"))
    _check_rgb8(out, 10, 10)
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[9, 9]) == (255, 255, 255)


def test_palette_image(tmp_path: Path) -> None:
    img = Image.new("P", (12, 9))
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * (254 * 3))
    img.paste(1, (0, 0, 6, 9))
    out = load_image(_save(img, tmp_path / "pal.gif"))
    _check_rgb8(out, 9, 12)
    assert tuple(out[0, 0]) == (10, 200, 30)
    assert tuple(out[0, 11]) == (0, 0, 0)


def test_exif_rotated_jpeg_is_turned_upright(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(img, tmp_path / "phone.jpg", exif=exif.tobytes())
    out = load_image(path)
    _check_rgb8(out, 40, 20)  # sides swapped


def test_tall_thin_image_loads(tmp_path: Path) -> None:
    path = _save(Image.new("L", (64, 20000), 128), tmp_path / "tall.png")
    _check_rgb8(load_image(path), 20000, 64)


def test_unicode_file_name(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (16, 16), (1, 2, 3)), tmp_path / "日本 çà.png")
    assert tuple(load_image(path)[0, 0]) == (1, 2, 3)


# --------------------------------------------------------------------------- bad files


def test_corrupt_png_bytes(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (5, 5, 5)).save(buf, "PNG")
    data = buf.getvalue()
    path = tmp_path / "trunc.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert info.value.path == path
    assert "trunc.png" in str(info.value) and "\n" not in str(info.value)


def test_garbage_png(tmp_path: Path) -> None:
    path = tmp_path / "garbage.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x01" * 100)
    with pytest.raises(ImageLoadError, match="garbage.png"):
        load_image(path)


def test_text_file_renamed_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("just some notes\n")
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert str(info.value) == f"cannot read '{path}': not an image file (cannot identify image file)"


def test_text_file_renamed_tif(tmp_path: Path) -> None:
    path = tmp_path / "notes.tif"
    path.write_text("just some notes\n")
    with pytest.raises(ImageLoadError, match="notes.tif"):
        load_image(path)


def test_one_pixel_image_is_too_small(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (1, 1)), tmp_path / "dot.png")
    with pytest.raises(ImageLoadError, match=r"too small \(1x1"):
        load_image(path)


def test_too_many_pixels(tmp_path: Path) -> None:
    path = _save(Image.new("L", (100, 50)), tmp_path / "big.png")
    with pytest.raises(ImageLoadError, match=r"too large \(100x50"):
        load_image(path, max_pixels=4000)


def test_pil_bomb_limit_is_replaced_and_restored(tmp_path: Path) -> None:
    path = _save(Image.new("L", (300, 300)), tmp_path / "bomb.png")
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1000  # PIL alone would refuse this file
    try:
        _check_rgb8(load_image(path), 300, 300)
        assert Image.MAX_IMAGE_PIXELS == 1000
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_image(tmp_path / "nope.png")


# --------------------------------------------------------------------------- listing


def _touch_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(path)
    return path


def test_list_images_natural_order_and_skips(tmp_path: Path) -> None:
    for name in ["img10.png", "img2.PNG", "img1.jpg"]:
        _touch_image(tmp_path / name)
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    _touch_image(tmp_path / "sub" / "deep.png")

    images, skipped = list_images([tmp_path])
    assert [p.name for p in images] == ["img1.jpg", "img2.PNG", "img10.png"]
    reasons = {p.name: r for p, r in skipped}
    assert "hidden" in reasons[".hidden.png"]
    assert ".txt" in reasons["readme.txt"]
    assert "sub" in reasons

    images, _ = list_images([tmp_path], recursive=True)
    assert [relative_name(p, tmp_path) for p in images] == [
        "img1.jpg", "img2.PNG", "img10.png", "sub/deep.png",
    ]


def test_list_images_single_files_and_duplicates(tmp_path: Path) -> None:
    a = _touch_image(tmp_path / "a.tif")
    images, skipped = list_images([a, tmp_path, str(a)])
    assert images == [a]
    assert skipped == []


def test_list_images_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        list_images([tmp_path / "missing_dir"])


def test_list_images_empty_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NoImagesError) as info:
        list_images([empty])
    msg = str(info.value)
    assert str(empty) in msg and ".png" in msg and ".tiff" in msg


def test_list_images_only_non_images(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("1,2")
    with pytest.raises(NoImagesError, match="skipped 1"):
        list_images([tmp_path])


def test_extensions_cover_spec() -> None:
    assert set(IMAGE_EXTENSIONS) == {
        ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp",
    }


def test_relative_name_and_find_root(tmp_path: Path) -> None:
    img = _touch_image(tmp_path / "in" / "x" / "y.png")
    assert relative_name(img, tmp_path / "in") == "x/y.png"
    assert find_root(img, [tmp_path / "other.png", tmp_path / "in"]) == tmp_path / "in"
    assert relative_name(img, find_root(img, [img])) == "y.png"
    with pytest.raises(ValueError):
        relative_name(img, tmp_path / "elsewhere")


def test_file_sha1(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"abc" * 1000)
    digest = file_sha1(path, chunk_size=7)
    import hashlib

    assert digest == hashlib.sha1(b"abc" * 1000).hexdigest()
    path.write_bytes(b"abd" * 1000)
    assert file_sha1(path) != digest
