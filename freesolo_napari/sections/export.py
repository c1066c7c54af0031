"""Export: COCO (RLE or polygons) and 16-bit label images, for one image, the open images or a folder.

Writing is the engine's (``engine.io.coco``): atomic, and an existing file is never replaced
silently — the dialogs ask, and a replaced file is kept as ``NAME.bak``. A folder export reads
each image's masks from the caches (the user's edits where there are some, else Free Mask on the
cached features) in a worker, with progress and Cancel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from qtpy.QtWidgets import QComboBox, QFormLayout, QHBoxLayout, QMessageBox, QPushButton, QVBoxLayout, QWidget

from freesolo_napari.large import is_large

CURRENT, OPEN, FOLDER = "current image", "all open images", "whole folder"
FORMATS = {"RLE": "rle", "polygons": "polygon"}


class ExportControls(QWidget):
    """Export scope and COCO encoding, and the two export buttons; ``run_scope`` runs folder exports."""

    def __init__(self, ctx, run_scope):
        super().__init__()
        self.ctx = ctx
        self.run_scope = run_scope  # its folder browser, and the batch plumbing of folder exports
        self.scope = QComboBox(toolTip="Which masks to export: the selected image, every open image with masks, "
                               "or every image of the open folder (your edits included)")
        self.scope.addItems([OPEN, CURRENT, FOLDER])
        self.format = QComboBox(toolTip="COCO segmentation encoding: RLE (exact) or polygons (every part of a mask)")
        self.format.addItems(list(FORMATS))
        self.coco_button = QPushButton("Export COCO…", toolTip="Write the masks (with your edits) as a COCO JSON file")
        self.coco_button.clicked.connect(self.ask_coco)
        self.labels_button = QPushButton("Export label images…",
                                         toolTip="Write one 16-bit label PNG per image into a folder (label k = mask k)")
        self.labels_button.clicked.connect(self.ask_labels)
        # replacing existing label images: ask (a dialog by default; swappable for scripts and tests)
        self.confirm_overwrite: Callable[[list[Path]], bool] = self._ask_overwrite
        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("export", self.scope)
        form.addRow("COCO masks as", self.format)
        row = QHBoxLayout()
        row.addWidget(self.coco_button)
        row.addWidget(self.labels_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addLayout(row)

    # ---- the two exports (programmatic) ---------------------------------------------------
    def export_coco(self, path: str | Path, *, scope: str | None = None, segmentation: str | None = None,
                    overwrite: bool = False):
        """Write a COCO file; a folder export runs in a worker (returned), the others at once."""
        from engine.io.coco import build_coco_dataset, write_coco

        seg = segmentation or FORMATS[self.format.currentText()]

        def write(results):
            dataset = build_coco_dataset(results, segmentation=seg, info={"description": "freesolo-napari export"})
            return write_coco(path, dataset, overwrite=overwrite)

        return self._export(scope, write, "Exported {n} image(s) to {target}")

    def export_labels(self, folder: str | Path, *, scope: str | None = None, overwrite: bool = False):
        """Write one 16-bit label PNG per image into ``folder`` (existing files need ``overwrite``)."""
        from engine.io.coco import write_label_images

        def write(results):
            write_label_images(results, folder, fmt="png", overwrite=overwrite)
            return Path(folder)

        return self._export(scope, write, "Exported label images of {n} image(s) to {target}")

    def _export(self, scope, write, done_text):
        scope = scope or self.scope.currentText()
        if scope == FOLDER:
            return self._export_folder(write, done_text)
        try:
            results = self._results(scope)
            if any(is_large((r.height, r.width)) for r in results):  # seconds of encoding: not on the GUI thread
                return self._write_in_worker(write, results, done_text)
            target = write(results)
        except (ValueError, OSError) as exc:
            self.ctx.notify(f"Export failed: {exc}")
            return None
        self.ctx.set_status(done_text.format(n=len(results), target=target))
        return None

    def _write_in_worker(self, write, results, done_text):
        """Encode and write ``results`` (of a very large image) in a worker; returns it."""
        from freesolo_napari.workers import create_worker

        ctx = self.ctx
        worker = create_worker(self, write, results, _ignore_errors=True)
        worker.returned.connect(lambda target: ctx.set_status(done_text.format(n=len(results), target=target)))
        worker.errored.connect(lambda exc: ctx.notify(f"Export failed: {exc}"))
        worker.finished.connect(lambda: ctx.set_busy(False, job=worker))
        ctx.set_busy(True, f"Exporting {len(results)} image(s)…", job=worker)
        worker.start()
        return worker

    def _results(self, scope: str):
        from freesolo_napari.exchange import open_results

        ctx = self.ctx
        names = [ctx.current_image()] if scope == CURRENT else None
        results = open_results(ctx.viewer, ctx.state.automatic, names=names, choices=ctx.state.choices)
        if not results:
            what = "the selected image" if scope == CURRENT else "any open image"
            raise ValueError(f"nothing to export: {what} has no masks (run Free Mask or import masks first)")
        return results

    def _export_folder(self, write, done_text):
        from freesolo_napari.workers import create_worker

        ctx = self.ctx
        view = self.run_scope.folder_view
        if view.session is None:
            ctx.notify("Export failed: no folder is open (run on: folder → Open folder…)")
            return None
        view.save_current_edits()
        try:
            params, generators = ctx.current_params(), ctx.current_generators()
        except ValueError as exc:
            ctx.notify(str(exc))
            return None
        worker = create_worker(self, _folder_export, view.session, (params, generators, ctx.current_tiling()),
                               ctx.feature_config(), view.live_results(), write, _ignore_errors=True)
        worker.yielded.connect(self._on_folder_item)
        summary = {}

        def done(cancelled: bool):
            if cancelled or "target" not in summary:
                return None
            text = done_text.format(n=summary["n"], target=summary["target"])
            if summary["missing"]:
                text += f"; {summary['missing']} image(s) without masks left out"
            return text

        worker.returned.connect(summary.update)
        return self.run_scope.start_batch(worker, len(view.session), "Exporting the folder…", on_done=done,
                                          on_error=lambda exc: ctx.notify(f"Export failed: {exc}"))

    def _on_folder_item(self, item) -> None:
        done, total, name, problem = item
        self.run_scope.step(done, total)
        if problem:
            self.ctx.notify(f"Not exported: {problem}")

    # ---- dialogs --------------------------------------------------------------------------
    def ask_coco(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(self, "Export COCO", "masks.json", "COCO JSON (*.json)")
        if path:  # the dialog already asked before replacing a file; the old one is kept as .bak
            self.export_coco(path, overwrite=True)

    def ask_labels(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(self, "Export label images into")
        if folder:
            self.export_labels_asking(folder)

    def export_labels_asking(self, folder: str | Path):
        """Export label images; if some exist already, ask (``confirm_overwrite``) before replacing them."""
        existing = [p for p in self._label_targets(folder) if p.exists()]
        if existing and not self.confirm_overwrite(existing):
            self.ctx.set_status("Label export cancelled: nothing was replaced.")
            return None
        return self.export_labels(folder, overwrite=bool(existing))

    def _label_targets(self, folder) -> list[Path]:
        scope = self.scope.currentText()
        if scope == FOLDER:
            session = self.run_scope.folder_view.session
            names = session.names if session is not None else []
        else:
            try:
                names = [r.file_name for r in self._results(scope)]
            except ValueError:
                names = []
        return [_label_target(Path(folder), n) for n in names]

    def _ask_overwrite(self, existing: list[Path]) -> bool:
        shown = ", ".join(p.name for p in existing[:3]) + (" …" if len(existing) > 3 else "")
        answer = QMessageBox.question(
            self, "FreeSOLO", f"{len(existing)} label image(s) already exist in '{existing[0].parent}' ({shown}).\n"
            "Replace them? The old files are kept as .bak.")
        return answer == QMessageBox.StandardButton.Yes


def _label_target(folder: Path, file_name: str) -> Path:
    """Where ``engine.io.coco.write_label_images`` writes an image's labels: ``stack.tif[z=3]`` ->
    ``stack[z=3].png``."""
    from engine.io.stacks import split_plane_name

    base, plane = split_plane_name(file_name)
    target = (folder / base).with_suffix(".png")
    return target.with_name(target.stem + plane.suffix() + ".png")


def _folder_export(session, settings, config, live, write):
    """Worker body: every image's masks from the caches (``settings``: the FreeMaskParams,
    GeneratorConfig and tiling to compute them with), then one atomic write."""
    results, missing = [], 0
    total = len(session)
    params, generators, tiling = settings
    for i, name, result, problem in session.iter_results(params, config, live, generators=generators, tiling=tiling):
        if result is None:
            missing += 1
        else:
            results.append(result)
        yield i + 1, total, name, problem
    if not results:
        raise ValueError("nothing to export: no image of the folder has masks yet (Run whole folder first)")
    target = write(results)
    return {"n": len(results), "missing": missing, "target": target}
