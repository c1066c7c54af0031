"""The layer contract: each layer imports only layers below it, no import cycles, Qt and napari only in the plugin.

Imports inside functions and under ``if TYPE_CHECKING`` count: a cycle through a lazy import
is still a cycle in the design. The layers, lowest first (the README's architecture picture):
"""

from __future__ import annotations

from pathlib import Path

import pytest
from importgraph import file_imports

ROOT = Path(__file__).resolve().parents[1]
LAYERS: list[tuple[str, ...]] = [
    ("engine", "engine.structures", "engine.geometry"),  # the package root, plain data structures, grid geometry
    ("engine.ops", "engine.io"),  # tensor and mask operations; images, COCO, RLE, atomic writes
    ("engine.runtime",),  # devices, progress, the batch loop, processes and shards
    ("engine.backbones",),
    ("engine.freemask", "engine.data"),  # the teacher; synthetic data
    ("engine.generators",),  # MaskCut and classical proposals beside Free Mask, and their merge
    ("engine.solo", "engine.eval"),  # the student; evaluation and baselines
    ("engine.selftrain",),
    ("engine.demo",),
    ("engine.cli",),
    ("freesolo_napari",),
]
FOREIGN_GUI = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "freesolo_napari")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in ("engine", "freesolo_napari"):
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module name imported anywhere in the file (absolute, relative resolved)."""
    return file_imports(path, name if path.name == "__init__.py" else name.rpartition(".")[0])


def _own(target: str) -> str | None:
    """The project module ``target`` names (a name imported from a module resolves to that module)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _layer(module: str) -> int:
    best = (-1, -1)
    for i, members in enumerate(LAYERS):
        for m in members:
            if (module == m or module.startswith(m + ".")) and len(m) > best[1]:
                best = (i, len(m))
    assert best[0] >= 0, f"{module} is in no layer: add it to LAYERS"
    return best[0]


def _top(module: str) -> str:
    """The member of LAYERS that holds ``module`` (engine.freemask.queries -> engine.freemask)."""
    members = [m for layer in LAYERS for m in layer if module == m or module.startswith(m + ".")]
    return max(members, key=len)


GRAPH = {m: {t for t in map(_own, _imports(m, p)) if t and t != m} for m, p in MODULES.items()}


def test_every_module_is_in_a_layer():
    assert len(MODULES) > 50
    for module in MODULES:
        _layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module):
    here = _layer(module)
    for target in GRAPH[module]:
        if module.startswith(target + ".") and MODULES[target].name == "__init__.py":
            continue  # a module's own package
        there = _layer(target)
        assert there < here or (there == here and _top(target) == _top(module)), (
            f"{module} (layer {here}) imports {target} (layer {there})")


def test_engine_never_imports_gui_code():
    for module, path in MODULES.items():
        if module.startswith("engine"):
            bad = [t for t in _imports(module, path) if t.split(".")[0] in FOREIGN_GUI]
            assert not bad, f"{module} imports {bad}"


def test_no_import_cycles():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if v.startswith(w + ".") and MODULES[w].name == "__init__.py":
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_contract_catches_a_violation(tmp_path):
    """The checker itself: an upward import and a cycle in a made-up graph are reported."""
    assert _layer("engine.io.coco") < _layer("engine.freemask.features")
    assert _own("engine.freemask.postprocess.FreeMaskParams") == "engine.freemask.postprocess"
    fake = tmp_path / "m.py"
    fake.write_text("def f():\n    from engine.cli import main\n")
    assert "engine.cli" in _imports("engine.io.fake", fake)
