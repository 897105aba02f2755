"""The ``paychaos`` command registry: how each package adds its commands to the root.

The root (``engine.entrypoints.cli``) owns the app and the sub-apps that several
packages fill (``serve``, ``bench``). It hands a :class:`CommandRoot` to every
``register(root)`` named in the ``paychaos.commands`` entry-point group, which
``pyproject.toml`` declares (``[project.entry-points."paychaos.commands"]``) and
``pip install`` writes into the environment. So ``engine`` imports nothing from
the packages that plug into it (``mock_psp``, ``scenarios``, ``loadtests``).

A package that is not installed, fails to import or fails to register costs
only its own commands: the root says so in one line on stderr, the rest work.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import NoReturn, Protocol

import typer
from rich.console import Console

ENTRY_POINT_GROUP = "paychaos.commands"


@dataclass(frozen=True, slots=True)
class CommandRoot:
    """What a package's ``register(root)`` may add commands to, and how they speak."""

    app: typer.Typer  # top-level commands and groups: ``paychaos run``, ``paychaos recon``
    serve: typer.Typer  # ``paychaos serve ...``: servers
    bench: typer.Typer  # ``paychaos bench ...``: benchmark tables
    console: Console

    def fail(self, message: str, code: int = 2) -> NoReturn:
        """A clear error naming the option or argument at fault, then exit ``code``."""
        self.console.print(f"[red]error:[/] {message}")
        raise typer.Exit(code)


class CommandEntry(Protocol):
    """The part of an ``importlib.metadata.EntryPoint`` the root uses."""

    @property
    def name(self) -> str: ...

    @property
    def value(self) -> str: ...

    def load(self) -> Callable[[CommandRoot], None]: ...


def installed_entries() -> list[CommandEntry]:
    """The ``paychaos.commands`` entry points installed in this environment, by name."""
    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda entry: entry.name)


def register_commands(root: CommandRoot, entries: Iterable[CommandEntry]) -> list[str]:
    """Call each entry's ``register(root)``; the names of those that failed, each reported."""
    failed: list[str] = []
    for entry in entries:
        try:
            entry.load()(root)
        except Exception as exc:  # any failure of a plugin stays its own: the rest work
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line
            print(
                f"paychaos: the {entry.name!r} commands ({entry.value}) are unavailable: {reason}",
                file=sys.stderr,
            )
            failed.append(entry.name)
    return failed
