"""What a source file imports, for the architecture tests (imports inside functions count)."""

from __future__ import annotations

import ast
from pathlib import Path


def file_imports(path: Path, package: str) -> set[str]:
    """Every module name imported anywhere in ``path`` (a module of ``package``), relative imports
    resolved; ``from a import b`` gives both ``a`` and ``a.b`` (b may be a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found
