"""The ``paychaos`` command tree: every command, sub-command and option, by name.

The root reads the other packages' commands from entry points; this snapshot
(``cli_tree.json``, taken before the root left the engine) proves that the
tree kept every command and option. Help texts are not in it: they change
for good reasons (they were compared when the root moved). A deliberate change
to the tree regenerates it: ``.venv/bin/python tests/unit/test_cli_tree.py --update``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

SNAPSHOT = Path(__file__).with_name("cli_tree.json")


def command_tree(app: typer.Typer) -> dict[str, Any]:
    """Each command's path (``paychaos serve psp``) -> its parameters, by path."""
    found: dict[str, Any] = {}
    _walk(typer.main.get_command(app), "paychaos", found)
    return dict(sorted(found.items()))


def _walk(command: Any, path: str, found: dict[str, Any]) -> None:
    # typer vendors its own click: its commands are recognised by shape, not by class.
    params = sorted((_param(param) for param in command.params), key=lambda p: p["name"])
    found[path] = {"params": params}
    if hasattr(command, "commands"):
        for name, child in command.commands.items():
            _walk(child, f"{path} {name}", found)


def _param(param: Any) -> dict[str, Any]:
    return {
        "name": param.name,
        "kind": param.param_type_name,
        "opts": param.opts,
        "secondary_opts": param.secondary_opts,
        "required": param.required,
    }


def test_the_command_tree_keeps_every_command_and_option() -> None:
    from engine.entrypoints.cli import app

    expected = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    actual = command_tree(app)
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    assert not missing, f"commands gone: {missing}"
    assert not extra, f"commands not in the snapshot (regenerate it): {extra}"
    for path, shape in expected.items():
        assert actual[path] == shape, f"{path!r} changed"


if __name__ == "__main__" and sys.argv[1:] == ["--update"]:
    from engine.entrypoints.cli import app

    SNAPSHOT.write_text(json.dumps(command_tree(app), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {SNAPSHOT}")
