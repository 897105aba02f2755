"""The README's HTTP walkthrough, run as written: the block after its marker, in bash.

Only what a fresh checkout cannot share with a test run is changed: the ports (free
ones, chosen now) and ``.venv/bin/paychaos`` (this interpreter's). It runs in a
temporary directory (its SQLite file and settlement report land there), with a
bound on its time, and its servers are stopped with it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from loadtests.load import free_port

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- walkthrough: tests/e2e/test_readme_walkthrough.py runs the block below -->"
RUN_S_MAX = 180


def walkthrough() -> str:
    text = README.read_text()
    assert MARKER in text, "the README lost its walkthrough marker"
    block = re.search(r"```sh\n(.*?)```", text[text.index(MARKER) :], re.S)
    assert block is not None
    return block.group(1)


def test_the_readme_http_walkthrough_runs_as_written(tmp_path: Path) -> None:
    script = walkthrough()
    ports = {"12111": free_port(), "8000": free_port(), "9100": free_port()}
    for default, port in ports.items():
        script = script.replace(f":{default}", f":{port}")
        script = script.replace(f"port {default}", f"port {port}")
    script = script.replace(".venv/bin/paychaos", str(Path(sys.executable).parent / "paychaos"))
    process = subprocess.Popen(
        ["bash", "-c", script], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=RUN_S_MAX)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = output.decode(errors="replace")
    lines = [line.strip() for line in text.splitlines()]
    assert process.returncode == 0, text[-3000:]
    for state in ("authorized", "captured", "partially_refunded"):
        assert state in lines, (state, text[-3000:])
    kinds = [line for line in lines if line in {"authorization_hold", "capture", "refund"}]
    assert kinds == ["authorization_hold", "capture", "refund"], text[-3000:]
    assert "404" in lines  # no /metrics on the API's port ...
    assert any(line.isdigit() and int(line) > 10 for line in lines)  # ... but on its own
    assert re.search(r"payments settled\s*│\s*1\s*│", text), text[-3000:]
    assert re.search(r"s_1\s*│\s*EUR\s*│\s*0\s*│\s*8000", text), text[-3000:]
    assert re.search(r"s_1\s*│\s*EUR\s*│\s*8000\s*│\s*in_transit", text), text[-3000:]
