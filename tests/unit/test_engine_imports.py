"""``engine`` imports nothing from the packages built on it: they plug into its CLI root."""

from __future__ import annotations

import ast
from pathlib import Path

import engine

OUTSIDE = frozenset({"scenarios", "loadtests", "mock_psp"})
DYNAMIC_IMPORTS = frozenset({"import_module", "__import__"})


def outside_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import of an ``OUTSIDE`` package, inside functions too."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        elif isinstance(node, ast.Call) and _called_name(node.func) in DYNAMIC_IMPORTS:
            modules = [arg.value for arg in node.args[:1] if isinstance(arg, ast.Constant)
                       and isinstance(arg.value, str)]  # fmt: skip
        line = getattr(node, "lineno", 0)
        found += [(line, module) for module in modules if module.split(".")[0] in OUTSIDE]
    return sorted(found)


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else None


def test_engine_imports_nothing_from_scenarios_loadtests_or_mock_psp() -> None:
    root = Path(engine.__file__).parent
    modules = sorted(root.rglob("*.py"))
    assert len(modules) > 50, f"found only {len(modules)} modules under {root}"
    offending = [
        f"{path.relative_to(root.parent)}:{line} imports {module}"
        for path in modules
        for line, module in outside_imports(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert not offending, "engine must not import its plug-ins:\n" + "\n".join(offending)


def test_the_check_sees_imports_inside_functions_and_dynamic_ones() -> None:
    source = (
        "import os\n"
        "from engine.domain import money\n"
        "def f():\n"
        "    from scenarios.cli import register\n"
        "    import loadtests.load as load\n"
        "    return importlib.import_module('mock_psp.server')\n"
    )
    assert outside_imports(ast.parse(source)) == [
        (4, "scenarios.cli"), (5, "loadtests.load"), (6, "mock_psp.server"),
    ]  # fmt: skip
