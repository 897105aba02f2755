"""The engine's shape: no class grows past ``CLASS_LINES_MAX`` lines (one job per class)."""

from __future__ import annotations

import ast
from pathlib import Path

import engine

CLASS_LINES_MAX = 400


def long_classes(root: Path, lines_max: int = CLASS_LINES_MAX) -> list[str]:
    """``path:line Class (n lines)`` for each class under ``root`` longer than ``lines_max``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > lines_max:
                    where = path.relative_to(root.parent)
                    found.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_class_in_the_engine_is_longer_than_400_lines() -> None:
    root = Path(engine.__file__).parent
    assert len(list(root.rglob("*.py"))) > 50, f"found too few modules under {root}"
    too_long = long_classes(root)
    assert not too_long, "split these by use case:\n" + "\n".join(too_long)


def test_the_check_measures_a_class_from_its_header_to_its_last_line(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(5))
    (package / "mod.py").write_text(f"class Short:\n{body}\n\nclass Long:\n{body}{body}")
    assert long_classes(package, lines_max=6) == ["pkg/mod.py:9 Long (11 lines)"]
    assert long_classes(package, lines_max=11) == []
