"""Every ``PaychaosError`` lives in ``engine.domain.errors`` and is drawn in its tree."""

from __future__ import annotations

import ast
from pathlib import Path

import engine
from engine.domain import errors
from engine.domain.errors import PaychaosError

ERRORS_MODULE = Path(errors.__file__).resolve()


def _tree_classes() -> set[type[PaychaosError]]:
    found: set[type[PaychaosError]] = set()
    pending: list[type[PaychaosError]] = [PaychaosError]
    while pending:
        cls = pending.pop()
        found.add(cls)
        pending.extend(cls.__subclasses__())
    return found


def _error_names() -> set[str]:
    return {cls.__name__ for cls in _tree_classes() if cls.__module__ == errors.__name__}


def _base_names(node: ast.ClassDef) -> set[str]:
    names = set()
    for base in node.bases:
        if isinstance(base, ast.Name):
            names.add(base.id)
        elif isinstance(base, ast.Attribute):
            names.add(base.attr)
    return names


def errors_defined_outside(root: Path, error_names: set[str]) -> list[str]:
    """``path:line Class`` for each class under ``root`` (bar the errors module) whose
    base is one of the tree's errors: it extends the tree outside its one module."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.resolve() == ERRORS_MODULE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and _base_names(node) & error_names:
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name}")
    return found


def test_every_paychaos_error_under_engine_is_defined_in_the_errors_module() -> None:
    root = Path(engine.__file__).parent
    outside = errors_defined_outside(root, _error_names())
    assert not outside, "define these in engine/domain/errors.py:\n" + "\n".join(outside)


def test_every_error_of_the_tree_is_drawn_in_the_errors_module_docstring() -> None:
    doc = errors.__doc__ or ""
    drawn = {line.split("── ")[-1].split()[0] for line in doc.splitlines() if "── " in line}
    missing = sorted(_error_names() - drawn - {"PaychaosError"})
    assert not missing, f"draw these in the tree of engine/domain/errors.py: {missing}"
    assert "PaychaosError" in doc


def test_the_old_homes_of_moved_errors_still_export_them() -> None:
    from engine.adapters import database, webhook_signature
    from engine.workers import reconciliation, relay

    assert database.SchemaOutOfDate is errors.SchemaOutOfDate
    assert database.LedgerGuardRefused is errors.LedgerGuardRefused
    assert webhook_signature.WebhookRejected is errors.WebhookRejected
    assert webhook_signature.WebhookSecretMissing is errors.WebhookSecretMissing
    assert relay.PublishFailed is errors.PublishFailed
    assert reconciliation.ReportUnavailable is errors.ReportUnavailable


def test_the_check_finds_an_error_subclassed_elsewhere(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "mod.py").write_text(
        "from engine.domain import errors\n"
        "class Fine(Exception): ...\n"
        "class Stray(errors.Conflict): ...\n"
    )
    assert errors_defined_outside(package, {"Conflict"}) == ["pkg/mod.py:3 Stray"]
