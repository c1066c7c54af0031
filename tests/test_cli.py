"""The ``freesolo`` command line, run for real on small generated folders."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.cli import build_parser, main
from engine.data.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    image_dir, gt = write_synthetic_dataset(root / "data", 2, seed=5, size=(160, 160), kind="photo")
    return root / "data"


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["freemask", "--help"])
    text = capsys.readouterr().out
    for opt in ("--out", "--backbone", "--tau", "--scales", "--top-k", "--nms-sigma", "--nms-kernel", "--min-area",
                "--split-components", "--device", "--overwrite", "--format", "--labels", "--overlays", "--input-scale",
                "--refine-radius", "--official-filters", "--cache-dir", "--stain", "--query-stride", "--tile",
                "--tile-overlap", "--quiet"):
        assert opt in text, opt
    assert {"freemask", "eval", "demo"} <= set(build_parser()._subparsers._group_actions[0].choices)


def test_console_script_is_installed():
    exe = shutil.which("freesolo", path=str(Path(sys.executable).parent))
    assert exe, "the freesolo console script is not installed next to this Python"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "freemask" in out.stdout


def test_freemask_batch_with_bad_files_then_eval(folder, tmp_path, capsys):
    images = tmp_path / "imgs"
    shutil.copytree(folder / "images", images)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (images / "notes.txt").write_text("hello")
    out = tmp_path / "pred.json"
    code, stdout, stderr = run(["freemask", images, "--out", out, "--labels", tmp_path / "labels",
                                "--overlays", tmp_path / "overlays", "--top-k", "5"], capsys)
    assert code == 1, "a failed file must make the exit code non-zero"
    assert "broken.png" in stderr and "notes.txt" in stderr
    data = json.loads(out.read_text())
    assert sorted(i["file_name"] for i in data["images"]) == ["img_0000.png", "img_0001.png"]
    assert data["annotations"] and all(len(a["bbox"]) == 4 for a in data["annotations"])
    assert len(list((tmp_path / "labels").glob("*.png"))) == 2
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 2
    label = np.array(Image.open(next((tmp_path / "labels").glob("*.png"))))
    assert label.dtype == np.uint16 and label.max() >= 1

    code, stdout, _ = run(["eval", folder / "gt.json", out, "--json"], capsys)
    metrics = json.loads(stdout)
    assert code == 0 and 0.0 <= metrics["AP50"] <= 1.0 and metrics["n_images"] == 2


def test_existing_output_is_refused_then_overwritten_with_backup(folder, tmp_path, capsys):
    out = tmp_path / "pred.json"
    out.write_text("precious")
    code, _, err = run(["freemask", folder / "images", "--out", out, "--top-k", "3"], capsys)
    assert code == 2 and "already exists" in err and out.read_text() == "precious"
    code, stdout, _ = run(["freemask", folder / "images", "--out", out, "--top-k", "3", "--overwrite"], capsys)
    assert code == 0 and json.loads(out.read_text())["images"]
    assert (tmp_path / "pred.json.bak").read_text() == "precious"
    # the rerun is resumable: features come from the cache, not the backbone
    code, stdout, _ = run(["freemask", folder / "images", "--out", out, "--top-k", "3", "--overwrite"], capsys)
    assert "2 from cache" in stdout


def test_streamed_coco_file_equals_the_one_written_with_label_images(folder, tmp_path, capsys):
    # the COCO file is written as images finish (CocoStreamWriter), with or without label images
    # written beside it: the two files are the same bytes (both without the feature cache: cached
    # features are stored at lower precision, so a cached run can differ)
    streamed, kept = tmp_path / "streamed.json", tmp_path / "kept.json"
    code, stdout, _ = run(["freemask", folder / "images", "--out", streamed, "--top-k", "4", "--no-cache"], capsys)
    assert code == 0 and stdout.splitlines()[-1].startswith("2 images, ")
    code, _, _ = run(["freemask", folder / "images", "--out", kept, "--top-k", "4", "--no-cache", "--labels", tmp_path / "l"],
                     capsys)
    assert code == 0 and streamed.read_bytes() == kept.read_bytes()
    assert json.loads(streamed.read_text())["annotations"]


def test_label_images_and_overlays_are_written_as_images_finish(folder, tmp_path, capsys):
    # the second image's overlay exists: the run stops there, after the first image's outputs were
    # written (nothing kept to the end), replaces nothing and leaves no COCO file
    out, labels, overlays = tmp_path / "pred.json", tmp_path / "labels", tmp_path / "overlays"
    overlays.mkdir()
    (overlays / "img_0001_overlay.png").write_bytes(b"precious")
    code, _, err = run(["freemask", folder / "images", "--out", out, "--labels", labels, "--overlays", overlays,
                        "--top-k", "3"], capsys)
    assert code == 2 and "already exists" in err and not out.exists()
    assert (labels / "img_0000.png").is_file()
    assert (overlays / "img_0000_overlay.png").is_file()
    assert (overlays / "img_0001_overlay.png").read_bytes() == b"precious"


def test_empty_folder_missing_path_and_unwritable_output(tmp_path, folder, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run(["freemask", tmp_path / "empty", "--out", tmp_path / "o.json"], capsys)
    assert code == 2 and "no images" in err and "empty" in err
    code, _, err = run(["freemask", tmp_path / "nowhere", "--out", tmp_path / "o.json"], capsys)
    assert code == 2 and "nowhere" in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(["freemask", folder / "images", "--out", blocker / "o.json"], capsys)
    assert code == 2 and "o.json" in err
    assert not (tmp_path / "o.json").exists()


def test_bad_parameters_and_malformed_coco(tmp_path, folder, capsys):
    code, _, err = run(["freemask", folder / "images", "--out", tmp_path / "o.json", "--tau", "1.5"], capsys)
    assert code == 2 and "tau" in err
    for option, value in (("--query-stride", "4"), ("--stain", "pap")):
        with pytest.raises(SystemExit) as exit_info:
            main(["freemask", str(folder / "images"), "--out", str(tmp_path / "o.json"), option, value])
        assert exit_info.value.code == 2 and option in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    code, _, err = run(["eval", folder / "gt.json", bad], capsys)
    assert code == 2 and "bad.json" in err


def test_demo_writes_outputs_and_says_where(tmp_path, capsys):
    code, stdout, _ = run(["demo", "--out", tmp_path, "--n", "1", "--size", "128"], capsys)
    assert code == 0
    runs = list(tmp_path.glob("run-*"))
    assert len(runs) == 1 and str(runs[0].resolve()) in stdout
    for kind in ("photo", "microscopy"):
        assert (runs[0] / kind / "freemask.json").is_file()
        assert list((runs[0] / kind / "overlays").glob("*.png"))
    # a second demo never overwrites the first
    code, _, _ = run(["demo", "--out", tmp_path, "--n", "1", "--size", "128"], capsys)
    assert code == 0 and len(list(tmp_path.glob("run-*"))) == 2
