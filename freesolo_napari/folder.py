"""A folder of images for the panel: the file list, the image shown, the on-disk caches.

No Qt here. The expensive half of Free Mask (backbone features) is cached on disk by the
engine (``engine.freemask.features.FeatureCache``, keyed by file content, shared with the ``freesolo``
command line), so reopening an image, or the folder in a new session, costs only the
post-processing. Masks the user edited are kept next to that cache (``edits/``, one file per
image content), so they survive moving between images and sessions and go into folder exports.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from engine.io.atomic import atomic_save
from engine.freemask.features import FeatureCache, FeatureConfig, FeatureExtractor
from engine.io.images import file_sha1, list_images, load_image, relative_name
from engine.generators.image import ImageFeatures, cached_image_features, generate_image, image_features
from engine.generators.pipeline import default_cache_dir
from engine.structures import ImageResult

PATH_KEY = "freesolo_path"  # image layer metadata: the file the layer was loaded from (engine.load_image)
_TABLE_COLUMNS = ("index", "score", "maskness", "scale", "area", "source")


def layer_path(layer) -> str | None:
    """The file an image layer was loaded from by this plugin (folder, COCO reader), else None."""
    return (getattr(layer, "metadata", None) or {}).get(PATH_KEY)


def extract_features(extractor: FeatureExtractor, image: np.ndarray, path: str | None = None,
                     cache_dir: str | Path | None = None, key_suffix: str = "",
                     tiling: tuple[int | None, int] = (None, 0)) -> ImageFeatures:
    """Features of ``image``: from the on-disk cache when ``path`` (the file it was loaded from) is known.

    ``key_suffix`` (``[z=3]``, ``[c=1]``) says which plane or channel of the file ``image`` is, as
    the command line keys them (``engine.io.stacks.content_key``). ``tiling`` (tile px or None,
    overlap px): an image it cuts into windows gets ``TiledFeatures``, one cache entry per window,
    as ``freesolo freemask --tile`` (``engine/generators/image.py``)."""
    if path is None:
        return image_features(extractor, image, None, None, *tiling)[0]
    cache = FeatureCache(cache_dir or default_cache_dir())
    return image_features(extractor, image, file_sha1(path) + key_suffix, cache, *tiling)[0]


@dataclass
class Edits:
    """A user-edited label image, its features table and the automatic labels it was edited from."""

    labels: np.ndarray
    table: dict[str, np.ndarray]
    automatic: np.ndarray | None
    shape: tuple[int, int] | None = None  # the image's (H, W) when ``labels`` is a large image's downsampled view


class FolderSession:
    """The images of one folder, the index of the one shown, and their cached features and edits."""

    def __init__(self, folder: str | Path, cache_dir: str | Path | None = None):
        self.folder = Path(folder)
        self.paths, self.skipped = list_images([self.folder])  # NoImagesError / FileNotFoundError
        self.names = [relative_name(p, self.folder) for p in self.paths]
        self.index = 0
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.cache = FeatureCache(root)
        self.edits_dir = root.parent / "edits"
        self._hashes: dict[Path, tuple[float, int, str]] = {}

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def name(self) -> str:
        return self.names[self.index]

    @property
    def path(self) -> Path:
        return self.paths[self.index]

    def position_text(self) -> str:
        return f"{self.index + 1} / {len(self)}  {self.name}"

    def go(self, index: int) -> int:
        self.index = max(0, min(len(self) - 1, index))
        return self.index

    def file_hash(self, path: Path) -> str:
        """Content hash of ``path`` (the cache key), remembered while the file is unchanged."""
        st = Path(path).stat()
        known = self._hashes.get(Path(path))
        if known is None or known[:2] != (st.st_mtime, st.st_size):
            known = (st.st_mtime, st.st_size, file_sha1(path))
            self._hashes[Path(path)] = known
        return known[2]

    # ---- features -------------------------------------------------------------------------
    def cached_features(self, path: Path, config: FeatureConfig, image: np.ndarray | None = None,
                        tiling: tuple[int | None, int] = (None, 0)) -> ImageFeatures | None:
        """The cached backbone features of ``path``, or None if they were never computed; with tiles on
        (``tiling``: tile px, overlap px) the windows of ``image`` (the file's pixels), as the command line's."""
        if tiling[0] is None:
            return self.cache.get(self.file_hash(path), config)
        return cached_image_features(self.cache, image, self.file_hash(path), config, *tiling)

    def features(self, path: Path, image: np.ndarray, extractor: FeatureExtractor,
                 tiling: tuple[int | None, int] = (None, 0)) -> tuple[ImageFeatures, bool]:
        """(features, came from the cache): computes and stores them on a miss (in windows with ``tiling``)."""
        return image_features(extractor, image, self.file_hash(path), self.cache, *tiling)

    # ---- user edits -----------------------------------------------------------------------
    def _edits_path(self, path: Path) -> Path:
        return self.edits_dir / f"{self.file_hash(path)}.npz"

    def save_edits(self, path: Path, labels: np.ndarray, table, automatic: np.ndarray | None,
                   shape: tuple[int, int] | None = None) -> Path:
        """Store edited ``labels`` (``shape``: the image's (H, W) when they are its downsampled view)."""
        arrays = {"labels": np.asarray(labels)}
        if shape is not None and tuple(shape) != np.shape(labels):
            arrays["image_shape"] = np.asarray(shape, dtype=np.int64)
        if automatic is not None:
            arrays["automatic"] = np.asarray(automatic)
        for col in _TABLE_COLUMNS:
            if col in getattr(table, "columns", table):
                values = np.asarray(table[col])
                arrays[f"table_{col}"] = values.astype(str) if values.dtype == object else values
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        data = buf.getvalue()
        return atomic_save(self._edits_path(path), lambda tmp: Path(tmp).write_bytes(data), overwrite=True, backup=False)

    def has_edits(self, path: Path) -> bool:
        """Whether the user's edits of ``path`` are stored (the image was corrected)."""
        return self._edits_path(path).is_file()

    def load_edits(self, path: Path) -> Edits | None:
        target = self._edits_path(path)
        if not self.has_edits(path):
            return None
        try:
            with np.load(target, allow_pickle=False) as z:
                table = {k[len("table_"):]: z[k] for k in z.files if k.startswith("table_")}
                if "source" in table:
                    table["source"] = table["source"].astype(object)
                shape = tuple(int(v) for v in z["image_shape"]) if "image_shape" in z.files else None
                return Edits(z["labels"], table, z["automatic"] if "automatic" in z.files else None, shape)
        except (OSError, ValueError, KeyError):  # a damaged file is ignored, like a cache miss
            return None

    def clear_edits(self, path: Path) -> None:
        try:
            self._edits_path(path).unlink(missing_ok=True)
        except OSError:
            pass

    # ---- the accepted self-training round --------------------------------------------------
    def _round_path(self) -> Path:
        import hashlib

        key = hashlib.sha1(str(self.folder.resolve()).encode()).hexdigest()[:16]
        return self.edits_dir / "rounds" / f"{key}.json"

    def save_accepted_round(self, k: int, masks: Path) -> None:
        """Remember that round ``k`` (its COCO file ``masks``) is what this folder's unedited images show."""
        from engine.io.atomic import atomic_write_json

        atomic_write_json(self._round_path(), {"folder": str(self.folder.resolve()), "round": int(k),
                                               "masks": str(Path(masks).resolve())}, overwrite=True, backup=False)

    def accepted_round(self) -> tuple[int, Path] | None:
        """(k, its COCO file) of the round accepted for this folder in an earlier session, if the file is there."""
        import json

        try:
            record = json.loads(self._round_path().read_text())
            k, masks = int(record["round"]), Path(record["masks"])
        except (OSError, ValueError, KeyError, TypeError):  # none, or damaged: as if none
            return None
        return (k, masks) if masks.is_file() else None

    # ---- results for export ---------------------------------------------------------------
    def iter_results(
        self, params, config: FeatureConfig, live: dict[str, ImageResult] | None = None,
        should_stop: Callable[[], bool] | None = None, generators=None, tiling: tuple[int | None, int] = (None, 0),
    ) -> Iterator[tuple[int, str, ImageResult | None, str | None]]:
        """(index, file name, result or None, problem or None) for every image of the folder.

        ``live`` results (the image on screen) win; then the user's stored edits; then the
        ``generators``' masks (None: Free Mask alone) from the cached features (the windows' with
        ``tiling``), with what was chosen automatically. Images never computed give (None, None);
        unreadable ones (None, a line naming the file).
        """
        from engine.io.images import ImageLoadError

        for i, (path, name) in enumerate(zip(self.paths, self.names)):
            if should_stop is not None and should_stop():
                return
            if live and name in live:
                yield i, name, live[name], None
                continue
            try:
                edits = self.load_edits(path)
                if edits is not None:
                    yield i, name, _edits_result(name, edits), None
                    continue
                image = load_image(path) if tiling[0] is not None else None  # tiles are planned on the image
                feats = self.cached_features(path, config, image, tiling)
                if feats is None:
                    yield i, name, None, None  # never computed
                    continue
                image = load_image(path) if image is None else image
                result, choices = generate_image(feats, params, image, generators)
            except (ImageLoadError, OSError, ValueError, RuntimeError) as exc:
                yield i, name, None, f"{name}: {exc}"
                continue
            h, w = image.shape[:2]
            yield i, name, ImageResult(name, h, w, result.instances, automatic=choices.as_dict()), None


def _edits_result(name: str, edits: Edits) -> ImageResult:
    """Stored edits as an ImageResult at the image's size (a large image's view scaled up)."""
    import pandas as pd

    from freesolo_napari.exchange import labels_result, preview_result
    from freesolo_napari.large import preview_factor

    table = pd.DataFrame(edits.table)
    if edits.shape is None:
        return labels_result(name, edits.labels, table, edits.automatic)
    return preview_result(name, edits.labels, table, edits.automatic, edits.shape, preview_factor(edits.shape))
