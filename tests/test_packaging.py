"""The napari manifest: valid, found by napari's plugin manager, the same file in editable and wheel installs."""

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


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


def _tracked_files(dest: Path) -> Path:
    """A copy of the files git tracks (or would track), so no stale build/ folder leaks into the wheel."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    names = listed.stdout.split("\n") if listed.returncode == 0 else []
    if not names:  # not a git checkout: the source folders themselves
        names = [str(p.relative_to(ROOT)) for d in ("engine", "freesolo_napari") for p in (ROOT / d).rglob("*")]
        names += ["pyproject.toml", "README.md", "plugins.yaml"]
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file() and "__pycache__" not in name:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = _tracked_files(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(out)]
    if importlib.util.find_spec("setuptools") is not None:
        cmd.insert(5, "--no-build-isolation")
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    return next(out.glob("freesolo_napari-*.whl"))


def test_wheel_carries_the_root_manifest(wheel, tmp_path):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert zf.read("freesolo_napari/plugins.yaml") == (ROOT / "plugins.yaml").read_bytes()
        eps = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        assert "[napari.manifest]" in eps and "freesolo-napari = freesolo_napari:plugins.yaml" in eps
        assert "freesolo = engine.cli:main" in eps
    from npe2 import PluginManifest

    extracted = tmp_path / "plugins.yaml"
    with zipfile.ZipFile(wheel) as zf:
        extracted.write_bytes(zf.read("freesolo_napari/plugins.yaml"))
    assert PluginManifest.from_file(extracted).name == "freesolo-napari"


def test_wheel_holds_every_module(wheel):
    """Every .py file of both packages, subpackages included (the wheel once lacked engine.solo)."""
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    modules = {p.relative_to(ROOT).as_posix() for d in ("engine", "freesolo_napari") for p in (ROOT / d).rglob("*.py")}
    assert modules, "no source modules found"
    assert sorted(modules - names) == []


def test_wheel_install_runs_the_cli_and_docks_the_panel(wheel, tmp_path):
    """A plain venv with the wheel (this environment's dependencies reachable, the editable install not)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True, timeout=60).stdout.strip())
    # the dependencies, as a plain path entry: .pth files there (the editable install's) are not processed
    deps = [p for p in map(Path, sys.path) if p.name == "site-packages" and p.is_dir()]
    (site / "zz_dependencies.pth").write_text("\n".join(map(str, deps)) + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                                "-q", str(wheel)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    help_out = subprocess.run([str(venv / "bin" / "freesolo"), "train", "--help"], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path, env=env)
    assert help_out.returncode == 0, help_out.stderr[-2000:]
    assert "--masks" in help_out.stdout
    code = f"""
import engine, freesolo_napari, engine.solo.train, engine.selftrain.rounds
assert engine.__file__.startswith({str(site)!r}), engine.__file__
assert freesolo_napari.__file__.startswith({str(site)!r}), freesolo_napari.__file__
import napari
viewer = napari.Viewer(show=False)
_dock, widget = viewer.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
assert type(widget).__module__.startswith("freesolo_napari"), type(widget)
assert type(widget).__module__ in __import__("sys").modules
assert __import__("sys").modules[type(widget).__module__].__file__.startswith({str(site)!r})
viewer.close()
print("docked")
"""
    docked = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert docked.returncode == 0 and "docked" in docked.stdout, (docked.stdout + docked.stderr)[-3000:]


def test_engine_never_imports_qt_or_napari():
    for path in (ROOT / "engine").rglob("*.py"):
        text = path.read_text()
        for banned in ("import napari", "from napari", "qtpy", "PyQt", "PySide", "magicgui"):
            assert banned not in text, f"{path.relative_to(ROOT)} mentions {banned}"
    code = "import sys, engine.cli, engine.runtime.batch, engine.freemask.postprocess; assert not any(m.split('.')[0] in ('napari','qtpy','PyQt6','PyQt5','PySide6') for m in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
