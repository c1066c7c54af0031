"""Stacks (3-D, time-lapse) are processed plane by plane, and multi-channel images with a channel choice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from engine.cli import main
from engine.data.synthetic import make_sample
from engine.io.coco import build_coco_dataset, read_coco, write_coco
from engine.io.images import ImageLoadError, load_image
from engine.io.stacks import Plane, load_plane, plane_name, planes_of, split_plane_name
from engine.solo.data import load_training_set
from engine.structures import ImageResult, InstanceMask

SIZE = 96


def _planes(n: int, seed: int = 0) -> np.ndarray:
    """n different grey nucleus-like planes (uint8), one synthetic sample each."""
    return np.stack([make_sample(seed + k, (SIZE, SIZE), kind="microscopy")[0][..., 1] for k in range(n)])


@pytest.fixture(scope="module")
def stacks(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stacks")
    tifffile.imwrite(folder / "zstack.tif", _planes(5), metadata={"axes": "ZYX"})
    tifffile.imwrite(folder / "movie.tif", _planes(4, seed=10).reshape(2, 2, SIZE, SIZE), imagej=True,
                     metadata={"axes": "TZYX"})
    fluo = np.stack([_planes(1, seed=20)[0], _planes(1, seed=30)[0], np.zeros((SIZE, SIZE), np.uint8)])
    tifffile.imwrite(folder / "fluo.tif", fluo, photometric="minisblack", metadata={"axes": "CYX"})
    return folder


def test_plane_names_map_back():
    plane = Plane((("t", 1), ("z", 3)))
    assert plane_name("sub/a.tif", plane) == "sub/a.tif[t=1,z=3]"
    assert split_plane_name("sub/a.tif[t=1,z=3]") == ("sub/a.tif", plane)
    assert split_plane_name("photo [1].png") == ("photo [1].png", Plane())  # brackets alone are no plane
    assert split_plane_name("a.png") == ("a.png", Plane())


def test_every_plane_of_a_stack_is_an_image(stacks):
    zs = list(planes_of(stacks / "zstack.tif"))
    assert [p.suffix() for p, _ in zs] == [f"[z={k}]" for k in range(5)]
    raw = tifffile.imread(stacks / "zstack.tif")
    for k, (plane, image) in enumerate(zs):
        assert image.shape == (SIZE, SIZE, 3)
        np.testing.assert_array_equal(load_plane(stacks / "zstack.tif", plane), image)
        assert np.corrcoef(image[..., 0].ravel(), raw[k].ravel())[0, 1] > 0.99  # plane k, not plane 0
    movie = [p.suffix() for p, _ in planes_of(stacks / "movie.tif")]
    assert movie == ["[t=0,z=0]", "[t=0,z=1]", "[t=1,z=0]", "[t=1,z=1]"]
    np.testing.assert_array_equal(load_image(stacks / "zstack.tif"), zs[0][1])  # 2-D loading: the first plane


def test_a_channel_is_taken_alone(stacks):
    raw = tifffile.imread(stacks / "fluo.tif")
    [(plane, colour)] = list(planes_of(stacks / "fluo.tif"))
    assert plane == Plane() and colour.shape == (SIZE, SIZE, 3)
    [(_, one)] = list(planes_of(stacks / "fluo.tif", channel=1))
    assert (one[..., 0] == one[..., 1]).all() and (one[..., 1] == one[..., 2]).all()  # grey
    assert np.corrcoef(one[..., 0].ravel(), raw[1].ravel())[0, 1] > 0.99
    with pytest.raises(ImageLoadError, match="fluo.tif.*channel 5"):
        list(planes_of(stacks / "fluo.tif", channel=5))
    with pytest.raises(ImageLoadError, match="has no plane"):
        load_plane(stacks / "fluo.tif", Plane((("z", 1),)))


def test_cli_writes_one_coco_image_per_plane(stacks, tmp_path, capsys):
    out = tmp_path / "masks.json"
    code = main(["freemask", str(stacks), "--out", str(out), "--labels", str(tmp_path / "labels"),
                 "--overlays", str(tmp_path / "overlays"), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    names = [im["file_name"] for im in read_coco(out).images]
    assert names == (["fluo.tif"] + [f"movie.tif[t={t},z={z}]" for t in (0, 1) for z in (0, 1)]
                     + [f"zstack.tif[z={k}]" for k in range(5)])
    labels = sorted(p.name for p in (tmp_path / "labels").iterdir())
    assert "zstack[z=3].png" in labels and len(labels) == len(names)
    assert len(list((tmp_path / "overlays").iterdir())) == len(names)
    # planes differ, so their masks differ; a second run takes every plane from the cache
    ds = json.loads(out.read_text())
    per_image = {}
    for ann in ds["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann["segmentation"]["counts"])
    assert len({tuple(v) for v in per_image.values()}) > 5
    capsys.readouterr()
    assert main(["freemask", str(stacks), "--out", str(tmp_path / "again.json"), "--device", "cpu"]) == 0
    assert f"({len(names)} from cache" in capsys.readouterr().out


def test_cli_channel_option(stacks, tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["freemask", str(stacks / "fluo.tif"), "--out", str(out), "--channel", "0", "--device", "cpu"]) == 0
    assert [im["file_name"] for im in read_coco(out).images] == ["fluo.tif"]
    capsys.readouterr()
    code = main(["freemask", str(stacks / "fluo.tif"), "--out", str(tmp_path / "bad.json"), "--channel", "7",
                 "--device", "cpu"])
    assert code != 0 and "channel 7" in capsys.readouterr().err


def test_training_reads_the_planes_its_masks_name(stacks, tmp_path):
    mask = np.zeros((SIZE, SIZE), bool)
    mask[10:30, 10:30] = True
    results = [ImageResult("zstack.tif[z=3]", SIZE, SIZE, [InstanceMask(mask, 1.0)])]
    write_coco(tmp_path / "masks.json", build_coco_dataset(results))
    samples, problems = load_training_set(stacks, tmp_path / "masks.json", 64)
    assert problems == [] and [s.file_name for s in samples] == ["zstack.tif[z=3]"]
    plane3 = torch.from_numpy(load_plane(stacks / "zstack.tif", Plane((("z", 3),))))
    assert samples[0].image.shape == (3, 64, 64) and samples[0].masks.shape[0] == 1
    assert abs(float(samples[0].image.float().mean()) - float(plane3.float().mean())) < 20


def test_compressed_stacks_are_read_plane_by_plane(tmp_path):
    """Microscopy TIFFs are often LZW- or zlib-compressed: every plane is read, not only the first."""
    planes = _planes(3, seed=40)
    for compression in ("lzw", "zlib"):
        path = tmp_path / f"{compression}.tif"
        tifffile.imwrite(path, planes, compression=compression, metadata={"axes": "ZYX"})
        read = list(planes_of(path))
        assert [p.suffix() for p, _ in read] == ["[z=0]", "[z=1]", "[z=2]"]
        assert np.corrcoef(read[2][1][..., 0].ravel(), planes[2].ravel())[0, 1] > 0.99
