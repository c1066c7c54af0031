"""COCO datasets: build, write, read back, validate, label images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from engine.io.atomic import OutputExistsError
from engine.io.coco import (
    CATEGORY,
    CocoFormatError,
    CocoStreamWriter,
    build_coco_dataset,
    build_results,
    load_image_results,
    read_coco,
    write_coco,
    write_label_images,
)
from engine.io.masks import label_image_to_masks
from engine.structures import ImageResult, InstanceMask


def _rect(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def _results() -> list[ImageResult]:
    a = ImageResult("a.png", 40, 60)
    a.instances = [
        InstanceMask(_rect(40, 60, 5, 15, 10, 30), 0.9, maskness=0.8,
                     extra={"scale": np.int64(2), "query_yx": (3, 4),
                            "embedding": np.arange(3, dtype=np.float32), "obj": object()}),
        # two parts, overlapping the first
        InstanceMask(_rect(40, 60, 10, 20, 20, 25) | _rect(40, 60, 30, 38, 50, 58), 0.4,
                     source="manual"),
        InstanceMask(np.zeros((40, 60), bool), 0.3),  # empty: skipped
    ]
    b = ImageResult("sub/b.jpg", 30, 30)
    b.instances = [InstanceMask(_rect(30, 30, 0, 30, 0, 1), 0.7)]
    c = ImageResult("c.tif", 20, 20)  # no objects
    return [a, b, c]


def test_build_dataset_structure() -> None:
    ds = build_coco_dataset(_results())
    assert ds["categories"] == [CATEGORY]
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in ds["images"]] == [
        (1, "a.png", 60, 40), (2, "sub/b.jpg", 30, 30), (3, "c.tif", 20, 20),
    ]
    anns = ds["annotations"]
    assert len(anns) == 3  # empty mask skipped
    assert [a["id"] for a in anns] == [1, 2, 3]
    first = anns[0]
    assert first["bbox"] == [10.0, 5.0, 20.0, 10.0]  # XYWH, not XYXY
    assert first["area"] == 200 and first["iscrowd"] == 0 and first["category_id"] == 1
    assert first["score"] == pytest.approx(0.9) and first["maskness"] == pytest.approx(0.8)
    assert first["source"] == "freemask"
    assert first["scale"] == 2 and first["query_yx"] == [3, 4]
    assert first["embedding"] == [0.0, 1.0, 2.0]
    assert "obj" not in first
    assert "maskness" not in anns[1] and anns[1]["source"] == "manual"
    json.dumps(ds)  # everything serialisable


@pytest.mark.parametrize("segmentation", ["rle", "polygon"])
def test_round_trip_equals_input(tmp_path: Path, segmentation: str) -> None:
    results = _results()
    path = write_coco(tmp_path / "out.json", build_coco_dataset(results, segmentation=segmentation))
    loaded = load_image_results(path)
    assert list(loaded) == ["a.png", "sub/b.jpg", "c.tif"]
    for res in results:
        got = loaded[res.file_name]
        assert (got.height, got.width) == (res.height, res.width)
        want = [i for i in res.instances if i.mask.any()]
        assert len(got.instances) == len(want)
        for g, w in zip(got.instances, want):
            np.testing.assert_array_equal(g.mask, w.mask)  # rectangles are exact in both
            assert g.score == pytest.approx(w.score)
            assert g.source == w.source
    first = loaded["a.png"].instances[0]
    assert first.maskness == pytest.approx(0.8)
    assert first.extra["scale"] == 2 and first.extra["embedding"] == [0.0, 1.0, 2.0]
    assert "bbox" not in first.extra and "id" not in first.extra
    if segmentation == "polygon":
        seg = json.loads(path.read_text())["annotations"][1]["segmentation"]
        assert isinstance(seg, list) and len(seg) == 2  # both parts kept


def test_load_overrides_source_and_defaults_score(tmp_path: Path) -> None:
    ds = build_coco_dataset(_results())
    for ann in ds["annotations"]:
        del ann["score"]
    path = write_coco(tmp_path / "gt.json", ds)
    loaded = load_image_results(path, source="gt")
    inst = loaded["a.png"].instances[0]
    assert inst.score == 1.0 and inst.source == "gt"


def test_build_results_for_evaluation() -> None:
    res = build_results(_results(), {"a.png": 11, "sub/b.jpg": 12, "c.tif": 13})
    assert [r["image_id"] for r in res] == [11, 11, 12]
    assert all(isinstance(r["segmentation"]["counts"], str) for r in res)
    assert res[0]["score"] == pytest.approx(0.9)
    with pytest.raises(KeyError, match="sub/b.jpg"):
        build_results(_results(), {"a.png": 1})


def test_mask_shape_mismatch_is_reported() -> None:
    bad = ImageResult("x.png", 10, 10, [InstanceMask(np.ones((5, 5), bool), 1.0)])
    with pytest.raises(ValueError, match="x.png"):
        build_coco_dataset([bad])


def test_write_refuses_overwrite_and_keeps_backup(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    write_coco(path, build_coco_dataset(_results()))
    first = path.read_text()
    with pytest.raises(OutputExistsError, match="out.json"):
        write_coco(path, {"images": [], "annotations": []})
    assert path.read_text() == first
    write_coco(path, {"images": [], "annotations": []}, overwrite=True)
    assert json.loads(path.read_text())["images"] == []
    assert (tmp_path / "out.json.bak").read_text() == first


# --------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("segmentation", ["rle", "polygon"])
def test_streamed_file_equals_the_whole_dataset_written_at_once(tmp_path: Path, segmentation: str) -> None:
    info = {"description": "streamed", "n": np.int32(2)}
    whole = write_coco(tmp_path / "whole.json", build_coco_dataset(_results(), segmentation=segmentation, info=info))
    stream = CocoStreamWriter(tmp_path / "out" / "streamed.json", segmentation=segmentation, info=info)
    counts = [stream.add(res) for res in _results()]
    assert not (tmp_path / "out" / "streamed.json").exists()  # nothing at the target before close
    streamed = stream.close()
    assert counts == [2, 1, 0] and (stream.n_images, stream.n_annotations) == (3, 3)
    assert streamed.read_bytes() == whole.read_bytes()
    assert sorted(p.name for p in streamed.parent.iterdir()) == ["streamed.json"]  # spools and temp gone


def test_streamed_file_of_no_images_is_a_valid_empty_dataset(tmp_path: Path) -> None:
    out = CocoStreamWriter(tmp_path / "empty.json").close()
    assert out.read_bytes() == write_coco(tmp_path / "whole.json", build_coco_dataset([])).read_bytes()
    assert read_coco(out).images == []


def test_stream_refuses_existing_output_and_duplicates_and_leaves_nothing_unclosed(tmp_path: Path) -> None:
    (tmp_path / "taken.json").write_text("{}")
    with pytest.raises(OutputExistsError):
        CocoStreamWriter(tmp_path / "taken.json")
    results = _results()
    with pytest.raises(ValueError, match="duplicate"), CocoStreamWriter(tmp_path / "dup.json") as stream:
        stream.add(results[0])
        stream.add(results[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.json"]
    stream = CocoStreamWriter(tmp_path / "taken.json", overwrite=True)
    stream.add(results[1])
    stream.close()
    assert [i["file_name"] for i in read_coco(tmp_path / "taken.json").images] == ["sub/b.jpg"]
    assert (tmp_path / "taken.json.bak").read_text() == "{}"


def _write_json(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_malformed_json_names_file_and_position(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "images": [],\n    "annotations": [,]\n}')
    with pytest.raises(CocoFormatError) as info:
        read_coco(path)
    msg = str(info.value)
    assert msg.startswith(f"'{path}': not valid JSON at line 3 column")


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(CocoFormatError, match="does not exist"):
        read_coco(tmp_path / "nope.json")
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CocoFormatError, match="bin.json"):
        read_coco(binary)


@pytest.mark.parametrize("top", [42, "text", {"annotations": []}, None])
def test_wrong_top_level(tmp_path: Path, top: object) -> None:
    path = _write_json(tmp_path / "top.json", top)
    with pytest.raises(CocoFormatError, match="top.json.*top level"):
        read_coco(path)


@pytest.mark.parametrize(
    ("image", "what"),
    [
        ({"id": 1, "file_name": "a.png", "width": 10}, "height"),
        ({"id": 1, "width": 10, "height": 10}, "file_name"),
        ({"id": 1, "file_name": "a.png", "width": 0, "height": 10}, "width"),
    ],
)
def test_bad_images_raise(tmp_path: Path, image: dict, what: str) -> None:
    path = _write_json(tmp_path / "imgs.json", {"images": [image], "annotations": []})
    with pytest.raises(CocoFormatError, match=f"imgs.json.*image 1.*{what}"):
        read_coco(path)


def test_bad_annotations_skipped_and_reported(tmp_path: Path) -> None:
    good = build_coco_dataset(_results())
    h, w = 40, 60
    anns = [
        good["annotations"][0],
        {"id": 7, "image_id": 1},  # no segmentation
        {"id": 8, "image_id": 99, "segmentation": [[0, 0, 5, 0, 5, 5]]},  # missing image
        {"id": 9, "image_id": 1, "segmentation": [[0, 0, 500, 0, 500, 5]]},  # outside image
        {"id": 10, "image_id": 1, "segmentation": {"size": [h + 1, w], "counts": "abc"}},
        {"id": 11, "image_id": 1, "segmentation": [[0, 0, 5]]},  # too short
        {"id": 12, "image_id": 1, "segmentation": {"size": [h, w], "counts": [1, 2]}},
        {"id": 13, "image_id": 1, "segmentation": "nonsense"},
        {"id": 14, "segmentation": [[0, 0, 5, 0, 5, 5]]},  # no image_id
        "not an object",
    ]
    path = _write_json(tmp_path / "anns.json", {**good, "annotations": anns})
    ds = read_coco(path)
    assert [a["id"] for a in ds.annotations] == [good["annotations"][0]["id"]]
    text = "\n".join(ds.problems)
    assert len(ds.problems) == 9
    assert "annotation 7 has no segmentation" in text
    assert "annotation 8 refers to missing image 99" in text
    assert "annotation 9: segmentation outside the image size" in text
    assert "annotation 10: segmentation outside the image size" in text
    assert "annotation 11" in text and "annotation 12" in text and "annotation 13" in text
    assert "annotation 14 has no image_id" in text
    assert "annotation at index 9 is not an object" in text
    # the good one still loads
    problems: list[str] = []
    loaded = load_image_results(path, problems=problems)
    assert len(loaded["a.png"].instances) == 1 and len(problems) == 9


def test_result_list_is_accepted(tmp_path: Path) -> None:
    res = build_results(_results(), {"a.png": 5, "sub/b.jpg": 6, "c.tif": 7})
    path = write_coco(tmp_path / "res.json", res)
    ds = read_coco(path)
    assert ds.is_result_list and ds.images == [] and ds.problems == []
    assert len(ds.annotations) == 3
    loaded = load_image_results(path)
    assert sorted(loaded) == ["5", "6"]
    np.testing.assert_array_equal(loaded["6"].instances[0].mask, _results()[1].instances[0].mask)


# --------------------------------------------------------------------------- label images


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_label_images_round_trip(tmp_path: Path, fmt: str) -> None:
    results = _results()
    paths = write_label_images(results, tmp_path / "labels", fmt=fmt)
    assert [p.relative_to(tmp_path / "labels").as_posix() for p in paths] == [
        f"a.{fmt}", f"sub/b.{fmt}", f"c.{fmt}",
    ]
    for res, path in zip(results, paths):
        labels = np.asarray(Image.open(path)) if fmt == "png" else tifffile.imread(path)
        assert labels.dtype == np.uint16
        assert labels.shape == (res.height, res.width)
        if res.file_name == "a.png":
            # higher score (instance 1) wins where 1 and 2 overlap
            assert labels[12, 22] == 1 and labels[18, 22] == 2 and labels[32, 55] == 2
        if res.file_name == "c.tif":
            assert not labels.any()
        if res.file_name == "sub/b.jpg":
            masks = label_image_to_masks(labels)
            assert len(masks) == 1
            np.testing.assert_array_equal(masks[0], res.instances[0].mask)
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == [f"a.{fmt}", f"c.{fmt}", "sub"]


def test_label_images_refuse_overwrite_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "labels"
    out.mkdir()
    (out / "c.png").write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="c.png"):
        write_label_images(_results(), out)
    assert sorted(p.name for p in out.iterdir()) == ["c.png"]  # a.png not written either
    write_label_images(_results(), out, overwrite=True)
    assert (out / "c.png.bak").read_bytes() == b"old"


def test_label_images_name_clash_and_escape(tmp_path: Path) -> None:
    clash = [ImageResult("x.jpg", 8, 8), ImageResult("x.png", 8, 8)]
    with pytest.raises(ValueError, match="x.jpg"):
        write_label_images(clash, tmp_path)
    with pytest.raises(ValueError, match="outside"):
        write_label_images([ImageResult("../evil.png", 8, 8)], tmp_path / "o")


def _random_mask(rng, h: int, w: int, kind: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    if kind == 0:
        m = rng.random((h, w)) < 0.3
    elif kind == 1:
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        m[y0: y0 + rng.integers(1, h + 1), x0: x0 + rng.integers(1, w + 1)] = True
    elif kind == 2:
        m[:] = True
    return m  # kind 3: empty


def test_rle_and_polygons_decode_to_the_crop_of_the_full_mask() -> None:
    from engine.io.masks import mask_to_rle, polygons_to_crop, polygons_to_mask, rle_to_crop

    def placed(crop, box, h, w):
        full = np.zeros((h, w), bool)
        y0, y1, x0, x1 = box
        full[y0:y1, x0:x1] = crop
        return full

    rng = np.random.default_rng(0)
    for t in range(200):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        m = _random_mask(rng, h, w, t % 4)
        rle = mask_to_rle(m)
        runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], m.T.ravel(), [2]]))), prepend=0)
        uncompressed = {"size": [h, w], "counts": [int(v) for v in runs]}  # first run may be 0 (foreground first)
        for given in (rle, uncompressed):
            crop, box = rle_to_crop(given)
            assert np.array_equal(placed(crop, box, h, w), m), t
            if m.any():
                ys, xs = np.nonzero(m)
                assert box == (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)  # tight
        polys = [list(p) for p in rng.uniform(-5, max(h, w) + 5, size=(int(rng.integers(1, 3)), 8))]
        crop, box = polygons_to_crop(polys, h, w)
        assert np.array_equal(placed(crop, box, h, w), polygons_to_mask(polys, h, w)), t


def test_import_of_a_small_mask_on_a_huge_image_allocates_its_crop_only(tmp_path: Path) -> None:
    import tracemalloc

    from engine.io.masks import crop_to_rle

    shape = (20000, 15000)  # 300 Mpx: a full-size boolean would be 300 MB
    rle = crop_to_rle(np.ones((300, 400), bool), (5000, 5300, 7000, 7400), shape)
    dataset = {"images": [{"id": 1, "file_name": "huge.tif", "height": shape[0], "width": shape[1]}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle},
                               {"id": 2, "image_id": 1, "category_id": 1,
                                "segmentation": [[100.0, 100.0, 300.0, 100.0, 300.0, 250.0]]}],
               "categories": [{"id": 1, "name": "object"}]}
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(dataset))
    tracemalloc.start()
    try:
        res = load_image_results(path)["huge.tif"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [m.box for m in res.instances][0] == (5000, 5300, 7000, 7400) and res.instances[0].area == 120_000
    assert res.instances[1].shape == shape and res.instances[1].area > 0
    assert peak < 20e6, f"decoding allocated {peak / 1e6:.0f} MB"
