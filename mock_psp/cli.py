"""``paychaos serve psp``: the mock PSP's command, registered on the ``paychaos`` root.

``pyproject.toml`` names :func:`register` in the ``paychaos.commands`` entry
points; the root (``engine.entrypoints.commands``) calls it with its
``CommandRoot``. The mock PSP stands alone, so it only states what it uses of
that root (:class:`CommandRoot` below) and imports nothing of the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn, Protocol

import typer
from rich.console import Console


class CommandRoot(Protocol):
    """The root's sub-apps and console, as ``engine.entrypoints.commands.CommandRoot``."""

    @property
    def serve(self) -> typer.Typer: ...

    @property
    def console(self) -> Console: ...

    def fail(self, message: str, code: int = 2) -> NoReturn: ...


def register(root: CommandRoot) -> None:
    @root.serve.command("psp")
    def serve_psp(
        host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65_535)] = 12111,
        seed: Annotated[int, typer.Option(help="Seed for ids and fault decisions.")] = 0,
        faults: Annotated[
            Path | None, typer.Option("--faults", help="Fault plan, YAML or JSON.")
        ] = None,
        timeout_hold_s: Annotated[
            float,
            typer.Option(help="Longest a lost response holds its request.", min=0.01, max=600),
        ] = 30.0,
    ) -> None:
        """The mock PSP over HTTP: Stripe's /v1 dialect plus /_admin."""
        from mock_psp.faultfile import FaultFileError, load_fault_plan
        from mock_psp.server import Listen, ServerSettings, build_core, serve

        try:
            plan = load_fault_plan(faults) if faults is not None else None
        except FaultFileError as exc:
            root.fail(f"--faults: {exc.message}")
        root.console.print(f"mock PSP on http://{host}:{port} (seed {seed}); admin under /_admin")
        settings = ServerSettings(timeout_hold_s=timeout_hold_s)
        serve(build_core(seed, plan), Listen(host, port), settings)
