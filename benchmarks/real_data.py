"""Build the real annotated sets for tuning and held-out evaluation from local copies of public data.

Nothing here is downloaded and no image or annotation is committed to this repository (their
licences differ, some are non-commercial): point the script at local copies and it writes, under
``--out`` (default ``benchmarks/out/real``), for each set ``NAME-tune/`` and ``NAME-heldout/``,
each with ``images/``, ``gt.json`` (COCO, per-object masks) and ``SOURCE.md`` (provenance,
licence, the split rule). Images are split by a hash of their file name (half and half), so the
split never depends on the order of listing.

Sets (each option takes the folder of a local copy):

``--coco DIR``     COCO val2017 images + ``annotations/instances_val2017.json`` (e.g. the 80-image
                   one-per-category subset in the public repository zzowenzz/COCO_Tiny). Photos.
                   Annotations CC BY 4.0, images under their Flickr licences (listed per image).
``--ctc DIR``      Cell Tracking Challenge 2-D fluorescence nuclei, ``N2DH-GOWT1`` and ``N2DL-HeLa``
                   folders with ``img/tNN.tif`` and instance label images ``gt/man_segNN.tif`` (e.g.
                   public repository datascience-mobi-2022/2022-topic-01-team-04, data/Otsu_data).
                   CTC conditions of use: cite the challenge, no redistribution, no commercial use.
``--monuseg DIR``  MoNuSeg H&E tiles, ``*.tif`` with per-nucleus polygons in ``*.xml`` (e.g. public
                   repository ykrmm/monuseg, datasets/MoNuSegTestData), cut into 250² crops (the
                   split is by crop). CC BY-NC-SA 4.0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.draw import polygon as draw_polygon

from engine.io.coco import build_coco_dataset, write_coco
from engine.io.images import load_image
from engine.io.masks import label_image_to_masks
from engine.structures import ImageResult, InstanceMask

LICENCES = {
    "coco": "COCO 2017 val: annotations CC BY 4.0 (cocodataset.org/#termsofuse); images under the Flickr "
            "licence listed per image in the annotation file.",
    "ctc": "Cell Tracking Challenge (celltrackingchallenge.net): cite the challenge and the data providers; "
           "no redistribution and no commercial use without permission. Kept out of this repository.",
    "monuseg": "MoNuSeg (Kumar et al., IEEE TMI 2017/2020): CC BY-NC-SA 4.0. Kept out of this repository.",
}


SPLIT_BY_HASH = "held out when int(sha1(file name, or its tile's), 16) is odd."


def held_out(name: str) -> bool:
    return int(hashlib.sha1(name.encode()).hexdigest(), 16) % 2 == 1


def _write_split(out: Path, name: str, items: list[tuple[str, Path, ImageResult]], source: str,
                 group=lambda file_name: file_name, rule: str = SPLIT_BY_HASH, is_held_out=None) -> None:
    """``group(file_name)`` is what the split hashes (crops of one tile stay together);
    ``is_held_out(file_name)`` replaces the hash rule (``rule`` says how, in SOURCE.md)."""
    is_held_out = is_held_out or (lambda f: held_out(group(f)))
    for split in ("tune", "heldout"):
        chosen = [(f, p, r) for f, p, r in items if is_held_out(f) == (split == "heldout")]
        folder = out / f"{name}-{split}"
        if folder.exists():
            shutil.rmtree(folder)
        (folder / "images").mkdir(parents=True)
        for file_name, path, _res in chosen:
            shutil.copy2(path, folder / "images" / file_name)
        write_coco(folder / "gt.json", build_coco_dataset([r for _f, _p, r in chosen], segmentation="rle"))
        objects = sum(len(r.instances) for _f, _p, r in chosen)
        (folder / "SOURCE.md").write_text(
            f"# {name} ({split})\n\n{len(chosen)} images, {objects} objects.\n\nSource: {source}\n\n"
            f"Licence: {LICENCES[name]}\n\nSplit: {rule}\n")
        print(f"{folder}: {len(chosen)} images, {objects} objects")


def build_coco(src: Path, out: Path) -> None:
    ann = json.loads((src / "annotations" / "instances_val2017.json").read_text())
    by_image: dict[int, list] = {}
    for a in ann["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    from engine.io.coco import annotation_to_mask

    items = []
    for img in ann["images"]:
        path = src / "val2017" / img["file_name"]
        if not path.is_file():
            continue
        h, w = img["height"], img["width"]
        instances = []
        for a in by_image.get(img["id"], []):
            mask = annotation_to_mask(a, h, w)
            if mask.any():
                instances.append(InstanceMask(mask, 1.0, source="gt", extra={"iscrowd": int(a.get("iscrowd", 0))}))
        items.append((img["file_name"], path, ImageResult(img["file_name"], h, w, instances)))
    _write_split(out, "coco", items, f"COCO val2017 images from {src}")


def _quarters(image: np.ndarray, labels: np.ndarray, stem: str, folder: Path):
    """The image cut into 2 × 2 quarters (a HeLa frame holds up to 350 nuclei; COCO AP counts at
    most 100 detections per image), each saved as a PNG, with its instance masks."""
    h, w = labels.shape
    for i, (y0, y1) in enumerate(((0, h // 2), (h // 2, h))):
        for j, (x0, x1) in enumerate(((0, w // 2), (w // 2, w))):
            name = f"{stem}_q{2 * i + j}.png"
            Image.fromarray(image[y0:y1, x0:x1]).save(folder / name)
            masks = label_image_to_masks(labels[y0:y1, x0:x1])
            yield name, folder / name, ImageResult(name, y1 - y0, x1 - x0, [InstanceMask(m, 1.0, source="gt") for m in masks])


def build_ctc(src: Path, out: Path) -> None:
    """Every annotated frame of both sequences, cut into quarters; within each sequence the frames,
    in time order, go alternately to tune and held-out (both halves hold both cell lines)."""
    items, held = [], set()
    tmp = out / "_ctc_quarters"
    tmp.mkdir(parents=True, exist_ok=True)
    for seq in ("N2DH-GOWT1", "N2DL-HeLa"):
        for k, gt in enumerate(sorted((src / seq / "gt").glob("man_seg*.tif"))):
            img = src / seq / "img" / f"t{gt.stem[len('man_seg'):]}.tif"
            image = load_image(img)
            quarters = list(_quarters(image, np.asarray(Image.open(gt)), f"{seq}_{img.stem}", tmp))
            items += quarters
            held |= {name for name, _p, _r in quarters} if k % 2 else set()
    _write_split(out, "ctc", items, f"Cell Tracking Challenge N2DH-GOWT1 and N2DL-HeLa from {src}, frames "
                 "cut into 2x2 quarters (8-bit PNG, the loader's contrast stretch)",
                 rule="per sequence, frames in time order alternate between tune (1st, 3rd, ...) and held-out "
                 "(2nd, 4th, ...); the four quarters of a frame stay together.", is_held_out=lambda f: f in held)
    shutil.rmtree(tmp)


def build_monuseg(src: Path, out: Path, crop: int = 250) -> None:
    """Each 1000² tile cut into crops of ``crop``² (about 30 nuclei each: COCO AP counts at most 100
    detections per image, and a whole tile holds about 500 nuclei)."""
    items = []
    tmp = out / "_monuseg_crops"
    tmp.mkdir(parents=True, exist_ok=True)
    for tif in sorted(src.glob("*.tif")):
        image = np.asarray(Image.open(tif).convert("RGB"))
        h, w = image.shape[:2]
        labels = np.zeros((h, w), np.int32)
        for k, region in enumerate(ET.parse(tif.with_suffix(".xml")).getroot().iter("Region"), start=1):
            pts = [(float(v.get("Y")), float(v.get("X"))) for v in region.iter("Vertex")]
            if len(pts) >= 3:
                rr, cc = draw_polygon([p[0] for p in pts], [p[1] for p in pts], (h, w))
                labels[rr, cc] = k
        for y in range(0, h - crop + 1, crop):
            for x in range(0, w - crop + 1, crop):
                name = f"{tif.stem}_y{y}_x{x}.png"
                Image.fromarray(image[y:y + crop, x:x + crop]).save(tmp / name)
                masks = label_image_to_masks(labels[y:y + crop, x:x + crop])
                items.append((name, tmp / name, ImageResult(name, crop, crop,
                                                           [InstanceMask(m, 1.0, source="gt") for m in masks])))
    _write_split(out, "monuseg", items, f"MoNuSeg test tiles from {src}, cut into {crop}x{crop} crops",
                 group=lambda f: f.rsplit("_y", 1)[0])
    shutil.rmtree(tmp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--coco", type=Path)
    ap.add_argument("--ctc", type=Path)
    ap.add_argument("--monuseg", type=Path)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/real"))
    args = ap.parse_args()
    for name, builder in (("coco", build_coco), ("ctc", build_ctc), ("monuseg", build_monuseg)):
        if getattr(args, name) is not None:
            builder(getattr(args, name), args.out)


if __name__ == "__main__":
    main()
