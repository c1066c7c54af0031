"""Bad input, property-based (hypothesis): COCO files and images never end in a traceback.

COCO readers get generated datasets and result lists with every kind of damage (missing keys,
wrong types, boxes outside the image, short polygons, RLE of the wrong size, repeated ids, NaN
scores, declared sizes of 10⁵ × 10⁵): the structural errors are one ``CocoFormatError`` naming
the file, every other bad entry is reported with its index or id, and the good entries load.
File names never lead outside the chosen folder. The image loader gets random bytes, truncated
PNG/JPEG/TIFF, multi-page TIFF, float, alpha and 1×N images.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from engine.io.coco import (
    MAX_IMAGE_PIXELS,
    CocoFormatError,
    build_coco_dataset,
    inside,
    load_image_results,
    parse_coco,
    write_label_images,
)
from engine.io.images import ImageLoadError, load_image
from engine.structures import ImageResult, InstanceMask

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

junk = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**12), st.floats(allow_nan=True),
                 st.text(max_size=8), st.lists(st.integers(-5, 50), max_size=8), st.just({"counts": "x"}))


not_a_number = st.one_of(st.none(), st.booleans(), st.just(math.nan), st.just(math.inf), st.text(max_size=8),
                         st.lists(st.integers(-5, 50), max_size=8), st.just({"counts": "x"}))


def _good_dataset(n_images: int = 2) -> dict:
    results = []
    for k in range(n_images):
        m = np.zeros((12, 16), bool)
        m[2 + k: 6 + k, 3:9] = True
        results.append(ImageResult(f"img_{k}.png", 12, 16, [InstanceMask(m, score=0.9)]))
    return build_coco_dataset(results)


def _damage(draw, ann: dict, h: int, w: int) -> dict:
    kind = draw(st.sampled_from(["drop_key", "junk_value", "short_polygon", "outside", "rle_size", "nan_score",
                                 "bbox_outside", "bad_counts"]))
    bad = dict(ann)
    if kind == "drop_key":
        bad.pop(draw(st.sampled_from(["segmentation", "image_id"])))
    elif kind == "junk_value":  # never a value that happens to be valid (a number score, an existing id)
        bad[draw(st.sampled_from(["segmentation", "image_id", "score"]))] = draw(not_a_number)
    elif kind == "short_polygon":
        bad["segmentation"] = [[1.0, 1.0, 4.0, 1.0]]
    elif kind == "outside":
        bad["segmentation"] = [[0, 0, w * 50.0, 0, w * 50.0, h * 50.0]]
    elif kind == "rle_size":
        bad["segmentation"] = {"size": [h + 3, w], "counts": [(h + 3) * w]}
    elif kind == "nan_score":
        bad["score"] = math.nan
    elif kind == "bbox_outside":  # a bbox is only a hint: the mask decides, so this entry stays good
        bad["bbox"] = [-50, -50, 10**6, 10**6]
    else:
        bad["segmentation"] = {"size": [h, w], "counts": "@@@@not-rle"}
    return bad


@st.composite
def damaged_datasets(draw):
    ds = _good_dataset(draw(st.integers(1, 3)))
    anns = []
    damaged = good = 0
    for i, ann in enumerate(ds["annotations"]):
        ann = dict(ann, id=i + 1)
        if draw(st.booleans()):
            bad = _damage(draw, ann, 12, 16)
            harmless = bad.get("bbox") == [-50, -50, 10**6, 10**6]
            damaged += not harmless
            good += harmless
            anns.append(bad)
        else:
            good += 1
            anns.append(ann)
    extra_images = draw(st.lists(st.fixed_dictionaries({
        "id": junk, "file_name": st.one_of(st.text(max_size=6), junk), "width": junk, "height": junk}), max_size=3))
    if draw(st.booleans()):
        anns.append(dict(anns[0]))  # a repeated annotation id
    return {**ds, "images": ds["images"] + extra_images, "annotations": anns}, good, damaged


def _loads(tmp_path: Path, obj) -> tuple[dict, list[str]]:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(obj, allow_nan=True))
    problems: list[str] = []
    return load_image_results(path, problems=problems), problems


@FAST
@given(case=damaged_datasets())
def test_damaged_datasets_load_their_good_entries(tmp_path, case):
    obj, good, damaged = case
    results, problems = _loads(tmp_path, obj)
    loaded = sum(len(r.instances) for r in results.values())
    assert loaded == good  # every untouched entry (and the harmless wild bbox) loads; no damaged one does
    assert len(problems) >= damaged
    for line in problems:
        assert "annotation" in line or "image" in line


@FAST
@given(obj=st.one_of(junk, st.lists(junk, max_size=4), st.dictionaries(st.text(max_size=6), junk, max_size=4),
                     st.fixed_dictionaries({"images": st.one_of(junk, st.lists(junk, max_size=3)),
                                            "annotations": st.one_of(junk, st.lists(junk, max_size=3))})))
def test_any_json_is_read_or_refused_with_one_clear_error(tmp_path, obj):
    try:
        results, problems = _loads(tmp_path, obj)
    except CocoFormatError as exc:
        assert "data.json" in str(exc)
    else:
        assert isinstance(results, dict) and all(isinstance(p, str) for p in problems)


def test_huge_declared_sizes_are_refused_without_allocating(tmp_path):
    big = {"id": 2, "file_name": "big.png", "width": 100_000, "height": 100_000}
    ds = _good_dataset(1)
    ds["images"].append(big)
    ds["annotations"].append({"id": 99, "image_id": 2, "segmentation": [[0, 0, 5e4, 0, 5e4, 5e4]]})
    ds["annotations"].append({"id": 100, "image_id": 2, "segmentation": {"size": [100_000, 100_000], "counts": [10**10]}})
    results, problems = _loads(tmp_path, ds)
    assert list(results) == ["img_0.png"]  # the good image loads; the huge one is skipped
    assert any("100000x100000" in p and "limit" in p for p in problems)
    rle_list = [{"image_id": 5, "segmentation": {"size": [100_000, 100_000], "counts": [10**10]}, "score": 0.5}]
    results, problems = _loads(tmp_path, rle_list)
    assert results == {} and any(f"{MAX_IMAGE_PIXELS:,}" in p for p in problems)


def test_repeated_ids_are_reported_by_index():
    ds = _good_dataset(2)
    ds["images"].append(dict(ds["images"][0]))
    parsed = parse_coco(ds)
    assert len(parsed.images) == 2
    assert any("index 2" in p and "repeats" in p for p in parsed.problems)


@pytest.mark.parametrize("name", ["../escape.png", "/etc/passwd", "a/../../b.png", "C:/x.png", "..", "sub/.."])
def test_file_names_never_lead_outside_the_folder(tmp_path, name):
    assert inside(tmp_path / "root", name) is None
    res = ImageResult(name, 8, 8, [InstanceMask(np.ones((8, 8), bool), 1.0)])
    with pytest.raises(ValueError, match="outside"):
        write_label_images([res], tmp_path / "root" / "labels")
    assert sorted(p.name for p in tmp_path.rglob("*")) in ([], ["root"], ["labels", "root"])


def test_nested_names_stay_inside(tmp_path):
    assert inside(tmp_path, "a/b/c.png") == tmp_path / "a" / "b" / "c.png"
    assert inside(tmp_path, "a\\b.png") == tmp_path / "a" / "b.png"


# ------------------------------------------------------------------------------- images


def _encoded(fmt: str, array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    if fmt == "TIFF":
        tifffile.imwrite(buf, array)
    else:
        Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


@FAST
@given(data=st.binary(max_size=2048), prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00"]))
def test_random_bytes_give_one_load_error(tmp_path, data, prefix):
    path = tmp_path / "x.png"
    path.write_bytes(prefix + data)
    try:
        image = load_image(path)
    except ImageLoadError as exc:
        assert "x.png" in str(exc)
    else:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


@FAST
@given(fmt=st.sampled_from(["PNG", "JPEG", "TIFF"]), cut=st.floats(0.05, 0.95), h=st.integers(8, 40), w=st.integers(8, 40))
def test_truncated_files_give_one_load_error(tmp_path, fmt, cut, h, w):
    rng = np.random.default_rng(h * 100 + w)
    data = _encoded(fmt, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    path = tmp_path / f"t.{fmt.lower()}"
    path.write_bytes(data[: max(1, int(len(data) * cut))])
    try:
        image = load_image(path)
    except ImageLoadError as exc:
        assert path.name in str(exc)
    else:  # some decoders fill a truncated tail; the result is still a proper image
        assert image.shape == (h, w, 3) and image.dtype == np.uint8


@FAST
@given(kind=st.sampled_from(["float", "float_nan", "alpha", "gray16", "one_row", "one_col", "multipage"]),
       h=st.integers(8, 30), w=st.integers(8, 30))
def test_unusual_images_load_or_are_refused_clearly(tmp_path, kind, h, w):
    rng = np.random.default_rng(h * 31 + w)
    path = tmp_path / "u.tif"
    if kind == "float":
        tifffile.imwrite(path, rng.normal(size=(h, w)).astype(np.float32))
    elif kind == "float_nan":
        arr = rng.normal(size=(h, w)).astype(np.float32)
        arr[0] = np.nan
        tifffile.imwrite(path, arr)
    elif kind == "alpha":
        path = tmp_path / "u.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA").save(path)
    elif kind == "gray16":
        tifffile.imwrite(path, rng.integers(0, 65535, (h, w), dtype=np.uint16))
    elif kind == "one_row":
        path = tmp_path / "u.png"
        Image.fromarray(rng.integers(0, 256, (1, w * 4), dtype=np.uint8)).save(path)
    elif kind == "one_col":
        tifffile.imwrite(path, rng.integers(0, 256, (h * 4, 1), dtype=np.uint8))
    else:
        tifffile.imwrite(path, rng.integers(0, 256, (3, h, w), dtype=np.uint8), photometric="minisblack")
    try:
        image = load_image(path)
    except ImageLoadError as exc:
        assert path.name in str(exc) and kind in ("one_row", "one_col")
    else:
        assert image.dtype == np.uint8 and image.shape[2] == 3 and np.isfinite(image).all()
