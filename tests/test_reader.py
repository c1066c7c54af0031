"""The npe2 COCO reader: File → Open on a COCO .json gives the images and their masks."""

import json

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.gui


@pytest.fixture
def coco_folder(tmp_path):
    """Two images with ground-truth masks, written as COCO next to the images."""
    from engine.io.coco import build_coco_dataset, write_coco
    from engine.io.masks import label_image_to_masks
    from engine.structures import ImageResult, InstanceMask
    from engine.data.synthetic import make_sample

    results = []
    for i, (name, size) in enumerate([("one.png", (96, 128)), ("sub/two.png", (112, 96))]):
        image, labels = make_sample(30 + i, size, kind="photo")
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / name)
        masks = label_image_to_masks(labels)
        results.append(ImageResult(name, *size, [InstanceMask(m, score=0.9 - 0.1 * k, maskness=0.8, source="gt")
                                                 for k, m in enumerate(masks)]))
    write_coco(tmp_path / "masks.json", build_coco_dataset(results, segmentation="polygon"))
    return tmp_path, results


def test_manifest_declares_the_reader():
    from pathlib import Path

    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(Path(__file__).resolve().parents[1] / "plugins.yaml")
    (reader,) = manifest.contributions.readers
    assert reader.command == "freesolo-napari.read_coco" and reader.filename_patterns == ["*.json"]
    from freesolo_napari.reader import get_reader

    assert get_reader("x.json") is not None and get_reader("x.png") is None


def test_open_coco_file_gives_images_and_labels(make_napari_viewer, coco_folder, qtbot):
    from napari.layers import Image as ImageLayer
    from napari.layers import Labels

    folder, results = coco_folder
    viewer = make_napari_viewer()
    viewer.open(str(folder / "masks.json"), plugin="freesolo-napari")
    images = [layer for layer in viewer.layers if isinstance(layer, ImageLayer)]
    assert [layer.name for layer in images] == ["one.png", "sub/two.png"]
    for res in results:
        labels = viewer.layers[f"{res.file_name} · free masks"]
        assert isinstance(labels, Labels) and labels.data.shape == (res.height, res.width)
        assert {"score", "maskness", "scale", "area", "source"} <= set(labels.features.columns)
        assert int(labels.data.max()) == len(res.instances)
        union = np.any([m.mask for m in res.instances], axis=0)
        assert ((labels.data > 0) == union).mean() > 0.97  # polygons round-trip to nearly the same pixels
        assert sorted(labels.features["score"][1:].round(3)) == sorted(round(m.score, 3) for m in res.instances)
    assert viewer.layers["one.png"].data.shape == (96, 128, 3)

    # the panel works on what the reader opened: export keeps the COCO file names
    _dock, widget = viewer.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    widget.export_coco(str(folder / "again.json"))
    from engine.io.coco import read_coco

    assert [im["file_name"] for im in read_coco(folder / "again.json").images] == ["one.png", "sub/two.png"]


def test_missing_images_and_non_coco_json(make_napari_viewer, coco_folder, qtbot):
    from engine.io.coco import CocoFormatError

    folder, results = coco_folder
    (folder / "one.png").unlink()
    viewer = make_napari_viewer()
    viewer.open(str(folder / "masks.json"), plugin="freesolo-napari")
    assert "one.png" not in viewer.layers and "one.png · free masks" in viewer.layers  # masks alone
    assert "sub/two.png" in viewer.layers

    other = folder / "settings.json"
    other.write_text(json.dumps({"name": "not coco", "values": [1, 2]}))
    with pytest.raises(CocoFormatError, match="settings.json.*not a COCO dataset"):
        viewer.open(str(other), plugin="freesolo-napari")
    (folder / "list.json").write_text("[1, 2, 3]")
    with pytest.raises(CocoFormatError, match="list.json.*not a COCO dataset"):
        viewer.open(str(folder / "list.json"), plugin="freesolo-napari")


def test_file_names_outside_the_coco_folder_are_never_read(tmp_path):
    """A COCO file naming '../secret.png' or an absolute path shows its masks alone, never that image."""
    import numpy as np
    from PIL import Image

    from engine.io.coco import build_coco_dataset, write_coco
    from engine.structures import ImageResult, InstanceMask
    from freesolo_napari.reader import read_coco_layers

    secret = tmp_path / "secret.png"
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(secret)
    folder = tmp_path / "inbox"
    mask = np.zeros((16, 16), bool)
    mask[2:6, 2:6] = True
    results = [ImageResult("../secret.png", 16, 16, [InstanceMask(mask, 0.9)]),
               ImageResult(str(secret), 16, 16, [InstanceMask(mask, 0.8)])]
    write_coco(folder / "masks.json", build_coco_dataset(results))
    layers = read_coco_layers(str(folder / "masks.json"))
    assert [kind for _data, _meta, kind in layers] == ["labels", "labels"]  # masks alone, no image read
