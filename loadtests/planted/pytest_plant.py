"""A pytest plugin that plants one defect for a whole test session.

``pytest -p loadtests.planted.pytest_plant --plant NAME`` runs the project's own
tests against the engine with the catalogue's defect ``NAME`` planted, so that
``paychaos bench detect --with-tests`` can say which defects the tests catch.
"""

from __future__ import annotations

import pytest

from loadtests.planted import DEFECTS

_planted: list[pytest.MonkeyPatch] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    names = ", ".join(d.name for d in DEFECTS)
    parser.addoption("--plant", default=None, help=f"plant one defect: {names}")


def pytest_configure(config: pytest.Config) -> None:
    name = config.getoption("--plant")
    if name is None:
        return
    by_name = {d.name: d for d in DEFECTS}
    if name not in by_name:
        raise pytest.UsageError(f"--plant: no planted defect {name!r} (known: {sorted(by_name)})")
    mp = pytest.MonkeyPatch()
    by_name[name].plant(mp)
    _planted.append(mp)


def pytest_unconfigure(config: pytest.Config) -> None:
    while _planted:
        _planted.pop().undo()
