"""A collapsible panel section: a header button that shows or hides its body."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QToolButton, QVBoxLayout, QWidget


class Section(QWidget):
    """``Section(title, body, tip)``: the header toggles the body; open or closed is a persisted setting."""

    def __init__(self, title: str, body: QWidget, tip: str, expanded: bool = False):
        super().__init__()
        self.body = body
        self.toggle = QToolButton(text=title, checkable=True, checked=expanded, toolTip=tip)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setStyleSheet("QToolButton { border: none; font-weight: bold; }")
        self.toggle.toggled.connect(self._show)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 4, 0, 0)
        layout.addWidget(self.toggle)
        layout.addWidget(body)
        self._show(expanded)

    def _show(self, on: bool) -> None:
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.body.setVisible(on)
