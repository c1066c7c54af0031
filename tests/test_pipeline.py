"""Free Mask over folders of awkward real files: every bad file is reported, the rest go through."""

import numpy as np
import pytest
from PIL import Image

from engine.freemask.postprocess import FreeMaskParams
from engine.io.images import NoImagesError
from engine.generators.pipeline import run_freemask_batch
from engine.data.synthetic import make_sample


@pytest.fixture(scope="module")
def awkward_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("awkward")
    rgb, _ = make_sample(9, (96, 128), kind="photo")
    gray = rgb.mean(axis=2).astype(np.uint8)
    Image.fromarray(rgb).save(d / "rgb.png")
    Image.fromarray(gray).save(d / "gray.png")
    Image.fromarray((gray.astype(np.uint16) * 257)).save(d / "deep16.png")
    Image.fromarray(np.dstack([rgb, np.full(gray.shape, 200, np.uint8)])).save(d / "rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(d / "palette.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    Image.fromarray(rgb).save(d / "rotated.jpg", exif=exif.tobytes())
    Image.fromarray(rgb).save(d / "名前 ünïcode.png")
    wide = np.tile(rgb[:64, :100], (1, 200, 1))  # 64 × 20000 px
    Image.fromarray(wide).save(d / "wide.png")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(d / "dot.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (d / "readme.txt").write_text("not an image")
    return d


def test_batch_reports_bad_files_and_keeps_going(awkward_folder):
    seen = []
    report = run_freemask_batch([awkward_folder], params=FreeMaskParams(top_k=3), device="cpu",
                                progress=lambda i, n, name: seen.append((i, n)))
    names = {r.file_name for r in report.results}
    assert names == {"rgb.png", "gray.png", "deep16.png", "rgba.png", "palette.png", "rotated.jpg",
                     "名前 ünïcode.png", "wide.png"}
    failed = dict(report.failures)
    assert len(failed) == 2
    assert any("dot.png" in k and "dot.png" in v for k, v in failed.items())
    assert any("corrupt.png" in k and "corrupt.png" in v for k, v in failed.items())
    assert [p for p, _ in report.skipped if p.endswith("readme.txt")]
    assert seen[-1] == (10, 10)
    by_name = {r.file_name: r for r in report.results}
    assert (by_name["rotated.jpg"].height, by_name["rotated.jpg"].width) == (128, 96)  # EXIF applied
    wide = by_name["wide.png"]
    assert (wide.height, wide.width) == (64, 20000)
    assert wide.instances and wide.instances[0].mask.shape == (64, 20000)  # masks at full resolution


def test_cancel_stops_between_images(awkward_folder):
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 2

    report = run_freemask_batch([awkward_folder], params=FreeMaskParams(top_k=2), device="cpu", should_stop=stop)
    assert report.cancelled and len(report.results) + len(report.failures) == 2


def test_empty_folder_is_one_clear_error(tmp_path):
    with pytest.raises(NoImagesError, match="no images"):
        run_freemask_batch([tmp_path], device="cpu")
