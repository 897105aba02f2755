"""The harness meets the engine at one boundary (``scenarios.sut``): the oracles judge
from the read API only, and the clients act through the system under test only."""

from __future__ import annotations

import ast
from pathlib import Path

import scenarios

ROOT = Path(scenarios.__file__).parent
# No storage, no SQL, no engine audit: what the engine shows through its read API only.
STORAGE = ("engine.adapters", "engine.audit", "sqlalchemy")
JUDGES = ("oracles.py", "marketplace.py", "reconcile.py", "clients.py")
# The engine's service (its steps and answers) is the system under test's business.
ACTORS = ("oracles.py", "marketplace.py", "clients.py")
# What a client may not reach past the system under test for.
WORLD_INSIDES = frozenset({"engine", "engine_op", "pump", "db", "webhook_intake", "node"})


def imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every absolute import, inside functions and TYPE_CHECKING too."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, node.module)]
    return sorted(found)


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(f"{p}.") for p in packages)


def offending(names: tuple[str, ...], packages: tuple[str, ...]) -> list[str]:
    return [
        f"scenarios/{name}:{line} imports {module}"
        for name in names
        for line, module in imports(ast.parse((ROOT / name).read_text(encoding="utf-8")))
        if within(module, packages)
    ]


def test_the_oracles_and_clients_import_nothing_of_the_engines_storage() -> None:
    assert offending(JUDGES, STORAGE) == []


def test_the_oracles_and_clients_import_nothing_of_the_engines_service() -> None:
    assert offending(ACTORS, ("engine.service",)) == []


def test_the_oracles_judge_states_by_their_own_reference_not_the_engines_table() -> None:
    judges = ("oracles.py", "references/states.py")
    assert offending(judges, ("engine.domain.states", "engine.service")) == []


def test_clients_reach_the_engine_only_through_the_system_under_test() -> None:
    tree = ast.parse((ROOT / "clients.py").read_text(encoding="utf-8"))
    reached = sorted(
        (node.lineno, node.attr)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in WORLD_INSIDES
    )
    assert reached == []


def test_the_check_sees_imports_anywhere_in_a_module() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from engine.adapters.schema import payments\n"
        "def f():\n"
        "    import sqlalchemy as sa\n"
        "    from engine.audit import audit\n"
        "from engine.adapterskit import x\n"
    )
    modules = [module for _, module in imports(ast.parse(source))]
    assert [m for m in modules if within(m, STORAGE)] == [
        "engine.adapters.schema", "sqlalchemy", "engine.audit",
    ]  # fmt: skip
