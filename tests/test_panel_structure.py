"""The panel's architecture contract: sections see a narrow context, never the panel; workers
return results and only the GUI thread writes the panel's state."""

import ast
import threading
from pathlib import Path

import numpy as np
import pytest
from importgraph import file_imports

PKG = Path(__file__).resolve().parents[1] / "freesolo_napari"


def _imports(path: Path) -> set[str]:
    """Every module a file imports (top level or inside functions), relative imports resolved."""
    return file_imports(path, ".".join(path.relative_to(PKG.parent).with_suffix("").parts[:-1]))


def test_sections_never_import_the_panel():
    sections = sorted((PKG / "sections").glob("*.py"))
    assert len(sections) >= 8
    for path in sections:
        assert "freesolo_napari.panel" not in _imports(path), f"{path.name} imports panel.py"


def test_no_module_touches_another_objects_private_members():
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
                continue
            if node.attr.startswith("__") and node.attr.endswith("__"):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            offenders.append(f"{path.relative_to(PKG)}:{node.lineno} {ast.unparse(node)}")
    assert not offenders


@pytest.mark.parametrize("name", ["state.py", "compute.py", "context.py"])
def test_state_and_worker_bodies_are_qt_free(name):
    imported = _imports(PKG / name)
    assert not [m for m in imported if m.split(".")[0] in ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari")]


def test_state_keeps_only_results_of_the_current_model():
    from freesolo_napari.state import PanelState

    state = PanelState()
    old = state.generation
    state.reset_model()  # the user picked another backbone while a job ran
    image = np.zeros((4, 4, 3), np.uint8)
    assert not state.store_features("a", image, "stale features", generation=old)
    state.adopt_extractor("stale extractor", old)
    assert "a" not in state.features and state.extractor is None
    assert state.store_features("a", image, "features", generation=state.generation)
    state.adopt_extractor("extractor", state.generation)
    state.adopt_extractor("another", state.generation)  # the first one stays
    assert state.features["a"][1] == "features" and state.extractor == "extractor"
    state.forget_closed([])
    assert not state.features


def test_state_keeps_only_features_of_the_current_tiling():
    from freesolo_napari.state import PanelState

    state = PanelState()
    image = np.zeros((4, 4, 3), np.uint8)
    assert state.store_features("a", image, "whole", tiling=(None, 0))
    assert state.set_tiling((512, 64)) and not state.features  # made without tiles: dropped
    state.extractor = "extractor"
    assert not state.set_tiling((512, 64))  # unchanged: nothing dropped
    assert not state.store_features("a", image, "whole", tiling=(None, 0))  # a job started before the change
    assert state.store_features("a", image, "windows", tiling=(512, 64))
    assert state.features["a"][1] == "windows" and state.extractor == "extractor"  # the backbone stays


def test_training_handles_every_progress_event_kind():
    from engine.selftrain import events
    from freesolo_napari.sections.training import TrainingSection

    assert set(TrainingSection.HANDLERS) == set(events.KINDS)


@pytest.mark.gui
def test_worker_results_are_stored_on_the_gui_thread(panel, qtbot):
    from engine.data.synthetic import make_sample
    from freesolo_napari.state import PanelState

    viewer, widget = panel
    writes = []  # (what, on the GUI thread)

    class Recorded(dict):
        def __setitem__(self, key, value):
            writes.append((f"features[{key}]", threading.current_thread() is threading.main_thread()))
            super().__setitem__(key, value)

    class RecordedState(PanelState):
        def __setattr__(self, name, value):
            writes.append((name, threading.current_thread() is threading.main_thread()))
            super().__setattr__(name, value)

    widget.state.__class__ = RecordedState
    widget.state.features = Recorded(widget.state.features)
    widget.run_button.click()  # the current image: features and the extractor come back from the worker
    qtbot.waitUntil(lambda: "synthetic photo" in widget.state.features and widget.run_button.isEnabled(),
                    timeout=120_000)
    viewer.add_image(make_sample(8, (96, 96), kind="photo")[0], name="second", rgb=True)
    widget.run_scope.set_scope("all open images")
    widget.run_button.click()
    qtbot.waitUntil(lambda: "second" in widget.state.features and widget.run_button.isEnabled(), timeout=120_000)
    assert widget.state.extractor is not None and widget.backbone_calls == 3  # 1, then both images again
    assert ("extractor", True) in writes and ("features[second]", True) in writes
    assert all(on_gui for _what, on_gui in writes), writes
