"""The command registry: packages add their commands through entry points; a broken one
costs only its own commands and one line on stderr."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from importlib.metadata import EntryPoint

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from engine.entrypoints.commands import (
    ENTRY_POINT_GROUP,
    CommandRoot,
    installed_entries,
    register_commands,
)

MISSING = EntryPoint("ghost", "paychaos_ghost.cli:register", ENTRY_POINT_GROUP)
MOCK_PSP = EntryPoint("mock_psp", "mock_psp.cli:register", ENTRY_POINT_GROUP)


class FailingEntry:
    """An installed package whose ``register`` raises (a bug, a missing optional import)."""

    name = "broken"
    value = "broken.cli:register"

    def load(self) -> Callable[[CommandRoot], None]:
        def register(root: CommandRoot) -> None:
            raise RuntimeError("cannot register\nwith a second line")

        return register


def fresh_root() -> CommandRoot:
    app = typer.Typer(no_args_is_help=True)
    serve, bench = typer.Typer(no_args_is_help=True), typer.Typer()
    app.add_typer(serve, name="serve")
    app.add_typer(bench, name="bench")
    return CommandRoot(app, serve, bench, Console(width=160))


def test_the_packages_register_their_commands_through_installed_entry_points() -> None:
    names = [entry.name for entry in installed_entries()]
    assert names == ["loadtests", "mock_psp", "scenarios"], (
        f"entry points {names}: after changing pyproject.toml run `pip install -e . --no-deps`"
    )


def test_a_package_that_is_not_installed_is_reported_in_one_line_and_the_rest_work(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = fresh_root()
    failed = register_commands(root, [MISSING, FailingEntry(), MOCK_PSP])
    assert failed == ["ghost", "broken"]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert "'ghost' commands (paychaos_ghost.cli:register) are unavailable" in lines[0]
    assert "ModuleNotFoundError" in lines[0]
    assert lines[1].endswith("RuntimeError: cannot register with a second line")
    result = CliRunner().invoke(root.app, ["serve", "psp", "--help"])
    assert result.exit_code == 0, result.output
    assert "Stripe's /v1 dialect" in result.output


def test_the_paychaos_root_survives_a_broken_entry_point() -> None:
    # The real root, in its own process, with one more entry point than the installed
    # ones: the installed metadata is untouched.
    script = textwrap.dedent(
        """
        import sys
        from importlib.metadata import EntryPoint

        import engine.entrypoints.commands as commands

        installed = commands.installed_entries()
        ghost = EntryPoint("ghost", "paychaos_ghost.cli:register", commands.ENTRY_POINT_GROUP)
        commands.installed_entries = lambda: [ghost, *installed]
        from engine.entrypoints.cli import main

        sys.argv = ["paychaos", *sys.argv[1:]]
        main()
        """
    )
    for args in (["--help"], ["bench", "--help"], ["serve", "--help"]):
        result = subprocess.run(
            [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr.splitlines() == [
            "paychaos: the 'ghost' commands (paychaos_ghost.cli:register) are unavailable: "
            "ModuleNotFoundError: No module named 'paychaos_ghost'"
        ]
    assert "psp" in result.stdout and "worker" in result.stdout  # serve: two packages' commands
