"""npe2 reader: open a COCO ``.json`` in napari as images plus their masks.

Each image the file names is looked up relative to the JSON's folder and loaded like the
engine loads images; its masks become a Labels layer in the panel's form (same name, same
``features`` table), so the panel can export, colour and re-run on them. Masks of images that
are not found are still shown, as Labels layers of the recorded size. A JSON that is not COCO
is refused with one line naming the file.
"""

from __future__ import annotations

from pathlib import Path

from engine.io.coco import CocoFormatError, inside, load_image_results
from freesolo_napari.folder import PATH_KEY
from freesolo_napari.large import FACTOR_KEY, INSTANCES_KEY, image_layer_data
from freesolo_napari.layers import labels_name, prepare_overlay


def get_reader(path):
    """npe2 ``get_reader``: our reader for one ``.json`` path, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return read_coco_layers if str(path).lower().endswith(".json") else None


def read_coco_layers(path) -> list[tuple]:
    """Layer data for a COCO file: (image, Labels) per image; raises CocoFormatError if not COCO."""
    from engine.io.images import ImageLoadError, load_image

    if isinstance(path, (list, tuple)):
        path = path[0]
    path = Path(path)
    problems: list[str] = []
    results = load_image_results(path, problems=problems)
    if not results:
        detail = f" ({problems[0]})" if problems else ""
        raise CocoFormatError(path, f"no images and no usable annotations: not a COCO dataset{detail}")
    layers: list[tuple] = []
    missing: list[str] = []
    for name, res in results.items():
        file = inside(path.parent, name)  # None: the name points outside the COCO file's folder
        image = None
        if file is not None and file.is_file():
            try:
                image = load_image(file)
            except ImageLoadError as exc:
                problems.append(str(exc))
            if image is not None and image.shape[:2] != (res.height, res.width):
                problems.append(f"'{file}' is {image.shape[1]}x{image.shape[0]}, the COCO file says "
                                f"{res.width}x{res.height}; masks shown without it")
                image = None
        else:
            missing.append(name)
        if image is not None:
            data, large = image_layer_data(image)  # a very large image: a pyramid
            layers.append((data, {"name": name, "rgb": True, "metadata": {PATH_KEY: str(file), "file_name": name},
                                  **large}, "image"))
        layers.append(_labels_layer(name, res))
    if missing:
        problems.append(f"{len(missing)} image(s) not found next to '{path.name}' (masks shown alone): "
                        + ", ".join(missing[:5]) + (" …" if len(missing) > 5 else ""))
    if problems:
        _warn(f"{path.name}: " + "; ".join(problems[:5]) + (f"; {len(problems) - 5} more" if len(problems) > 5 else ""))
    return layers


def _labels_layer(name: str, res) -> tuple:
    """The Labels layer tuple of one image's masks (a large image's downsampled, as the panel shows them)."""
    overlay = prepare_overlay(res.instances, (res.height, res.width))
    meta = {FACTOR_KEY: overlay.factor, INSTANCES_KEY: overlay.instances}
    return (overlay.labels, {"name": labels_name(name), "features": overlay.table, "opacity": 0.5,
                             "scale": (overlay.factor, overlay.factor), "metadata": meta}, "labels")


def _warn(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)
