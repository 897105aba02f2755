"""The mock PSP's HTTP driver and ``paychaos serve psp`` beyond what the SDK exercises."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from engine.entrypoints.cli import app
from mock_psp.background import serve_in_thread
from mock_psp.server import PspServer, ServerSettings, build_core

AUTH = {"Authorization": "Bearer sk_test_paychaos_e2e"}


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    server = PspServer(build_core(5), ServerSettings(timeout_hold_s=0.5))
    with (
        serve_in_thread(server.app) as base_url,
        httpx.Client(base_url=base_url, headers=AUTH, timeout=5.0) as client,
    ):
        yield client


def test_form_encoded_bodies_and_query_strings_are_stripes_dialect(http: httpx.Client) -> None:
    created = http.post(
        "/v1/payment_intents",
        data={"amount": "1500", "currency": "usd", "metadata[order_id]": "o-7"},
    )
    assert created.status_code == 200, created.text
    assert created.json()["metadata"] == {"order_id": "o-7"}
    listed = http.get("/v1/payment_intents", params={"limit": "1"})
    assert [item["id"] for item in listed.json()["data"]] == [created.json()["id"]]


def test_a_json_body_is_refused_with_a_stripe_error_and_changes_nothing(
    http: httpx.Client,
) -> None:
    refused = http.post("/v1/payment_intents", json={"amount": 1000, "currency": "usd"})
    assert refused.status_code == 400
    assert refused.json()["error"]["type"] == "invalid_request_error"
    assert refused.json()["error"]["param"] == "Content-Type"
    assert http.get("/v1/payment_intents").json()["data"] == []


def test_a_malformed_admin_fault_plan_names_the_field_and_changes_nothing(
    http: httpx.Client,
) -> None:
    before = http.get("/_admin/faults").json()
    bad = http.post("/_admin/faults", json={"api_rules": [{"error_500_rate": 2}]})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "api_rules.0.error_500_rate"
    assert http.get("/_admin/faults").json() == before
    not_json = http.post("/_admin/faults", content=b"{nope")
    assert not_json.status_code == 400


def test_a_lost_response_is_a_timeout_or_a_dropped_connection_never_an_answer(
    http: httpx.Client,
) -> None:
    plan = {"api_rules": [{"endpoints": ["payment_intents.create"], "timeout_after_rate": 1}]}
    assert http.post("/_admin/faults", json=plan).status_code == 200
    params = {"amount": "1000", "currency": "usd", "payment_method": "pm_card_visa"}
    with pytest.raises(httpx.ReadTimeout):
        http.post("/v1/payment_intents", data=params, timeout=0.2)
    started_s = time.monotonic()
    # A patient client: the server gives up holding after timeout_hold_s and drops it.
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/v1/payment_intents", data=params, timeout=5.0)
    assert time.monotonic() - started_s < 3.0
    # Both requests were processed: the responses, not the work, were lost.
    assert len(http.get("/v1/payment_intents").json()["data"]) == 2


def test_admin_can_advance_provider_time(http: httpx.Client) -> None:
    before = http.post("/_admin/clock/advance", json={"seconds": 0}).json()["now"]
    after = http.post("/_admin/clock/advance", json={"seconds": 3600}).json()["now"]
    assert 3600 <= after - before < 3700


# --- the command line --------------------------------------------------------------------


def test_serve_psp_with_a_bad_fault_file_names_the_file_and_field(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("api_rules:\n  - timeout_after_rate: 3\n")
    result = CliRunner().invoke(app, ["serve", "psp", "--faults", str(plan)])
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert "plan.yaml" in output
    assert "api_rules.0.timeout_after_rate" in output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("broken.json", "{", "not valid JSON"),
        ("list.yaml", "- 1\n", "must be a mapping"),
        ("unknown.yaml", "latency: 5\n", "latency"),
    ],
)
def test_serve_psp_refuses_unreadable_fault_files(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    plan = tmp_path / name
    plan.write_text(text)
    result = CliRunner().invoke(app, ["serve", "psp", "--faults", str(plan)])
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert name in output and expected in output
    missing = CliRunner().invoke(app, ["serve", "psp", "--faults", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2
    assert "nope.yaml" in missing.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_paychaos_serve_psp_serves_the_fault_plan_it_was_given(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"api_rules": [{"endpoints": ["refunds.*"], "error_503_rate": 1}]}))
    port = _free_port()
    command = [sys.executable, "-m", "engine.entrypoints.cli", "serve", "psp"]
    command += ["--port", str(port), "--seed", "3", "--faults", str(plan)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline_s = time.monotonic() + 20.0
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=2.0) as client:
            while True:
                try:
                    faults = client.get("/_admin/faults")
                    break
                except httpx.TransportError:
                    assert process.poll() is None, "serve psp exited"
                    assert time.monotonic() < deadline_s, "serve psp not ready"
                    time.sleep(0.05)
            assert faults.json()["api_rules"][0]["error_503_rate"] == 1
            shed = client.post("/v1/refunds", data={"payment_intent": "pi_x"}, headers=AUTH)
            assert shed.status_code == 503
    finally:
        process.terminate()
        process.wait(10)


def test_unknown_paths_and_methods_answer_in_stripes_shape() -> None:
    import httpx

    from mock_psp.background import serve_in_thread
    from mock_psp.server import PspServer, build_core

    server = PspServer(build_core(seed=1))
    with serve_in_thread(server.app) as url:
        for method, path in (("GET", "/nowhere"), ("DELETE", "/_admin/faults")):
            response = httpx.request(method, f"{url}{path}", timeout=5.0)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"]["type"] == "invalid_request_error"
