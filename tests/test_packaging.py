"""The napari manifest: valid, found by napari's plugin manager, the same file in editable and wheel installs."""

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def test_manifest_validates_with_npe2():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(ROOT / "plugins.yaml")
    assert manifest.name == "freesolo-napari"
    ids = {c.id for c in manifest.contributions.commands}
    assert all(i.startswith("freesolo-napari.") for i in ids)
    for command in manifest.contributions.commands:  # every python_name resolves to a real object
        module, attr = command.python_name.split(":")
        assert hasattr(importlib.import_module(module), attr), command.python_name
    out = subprocess.run([str(Path(sys.executable).parent / "npe2"), "validate", "freesolo-napari"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_plugin_manager_finds_the_root_manifest():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("freesolo-napari")
    assert manifest.display_name == "FreeSOLO"
    widgets = [w.display_name for w in manifest.contributions.widgets]
    assert widgets == ["FreeSOLO"]
    # editable install: the entry point's file is the repository root's plugins.yaml
    spec = importlib.util.find_spec("freesolo_napari")
    packaged = Path(spec.origin).parent / "plugins.yaml"
    assert packaged.resolve() == (ROOT / "plugins.yaml").resolve()


def test_wheel_carries_the_root_manifest(tmp_path):
    has_setuptools = importlib.util.find_spec("setuptools") is not None
    cmd = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)]
    if has_setuptools:
        cmd.insert(5, "--no-build-isolation")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next(tmp_path.glob("freesolo_napari-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert zf.read("freesolo_napari/plugins.yaml") == (ROOT / "plugins.yaml").read_bytes()
        eps = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        assert "[napari.manifest]" in eps and "freesolo-napari = freesolo_napari:plugins.yaml" in eps
        assert "freesolo = engine.cli:main" in eps
        assert any(n.startswith("engine/backbones/") for n in names)
    from npe2 import PluginManifest

    extracted = tmp_path / "plugins.yaml"
    with zipfile.ZipFile(wheel) as zf:
        extracted.write_bytes(zf.read("freesolo_napari/plugins.yaml"))
    assert PluginManifest.from_file(extracted).name == "freesolo-napari"


def test_engine_never_imports_qt_or_napari():
    for path in (ROOT / "engine").rglob("*.py"):
        text = path.read_text()
        for banned in ("import napari", "from napari", "qtpy", "PyQt", "PySide", "magicgui"):
            assert banned not in text, f"{path.relative_to(ROOT)} mentions {banned}"
    code = "import sys, engine.cli, engine.runtime.batch, engine.freemask.postprocess; assert not any(m.split('.')[0] in ('napari','qtpy','PyQt6','PyQt5','PySide6') for m in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
