"""The emulator as a real HTTP server on loopback, driven with httpx and the backends client."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from statemachine.effects import BackendCall, BackendStep, idempotency_key
from statemachine.table import ChannelKind
from worker.backends import Backends
from worker.emulators import Emulator, EmulatorServer, serve
from worker.settings import BackendSettings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RECORD = "4f9d1c1e-0000-4000-8000-00000000000a"


@pytest.fixture
def server() -> Iterator[EmulatorServer]:
    running = serve("127.0.0.1", 0, Emulator())
    try:
        yield running
    finally:
        running.shutdown()


def call(step: BackendStep, version: int = 2) -> BackendCall:
    return BackendCall(step, RECORD, idempotency_key(RECORD, version, step),
                       kind=ChannelKind.VOICE, channel_id="voice-1", name="Contoso Voice",
                       phone_number_id="phone-1")


def test_the_server_listens_on_loopback_and_answers_health(server: EmulatorServer) -> None:
    host, port = server.server_address[:2]

    assert host == "127.0.0.1"
    assert port > 0
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}


def test_the_backends_client_retries_a_script_set_over_http(server: EmulatorServer) -> None:
    sleeps: list[float] = []
    script = {"target": RECORD, "step": "activate_gate", "answers": [503, 503]}
    settings = BackendSettings(server.url, server.url + "/", server.url)

    with httpx.Client() as admin, Backends(settings, sleep=sleeps.append,
                                           rng=random.Random(3)) as backends:
        assert admin.post(f"{server.url}/_emulator/script", json=script).status_code == 200
        results = [backends.call(call(step)) for step in (
            BackendStep.PROVISION_CHANNEL, BackendStep.ACTIVATE_GATE,
            BackendStep.START_CALLING_TEST, BackendStep.DEACTIVATE_GATE,
            BackendStep.DEPROVISION_CHANNEL)]
        recorded = admin.get(f"{server.url}/_emulator/requests").json()

    assert all(result.ok for result in results)
    assert results[1].attempts == 3
    assert len(sleeps) == 2
    gate_tries = [r for r in recorded if r["step"] == "activate_gate"]
    assert [r["status"] for r in gate_tries] == [503, 503, 200]
    assert {r["idempotency_key"] for r in gate_tries} == {f"{RECORD}:2:activate_gate"}
    assert server.emulator.channels == {}


def test_a_chunked_body_is_refused(server: EmulatorServer) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"status": "Active"}'

    response = httpx.put(f"{server.url}/v1/gates/r1", content=chunks())

    assert response.status_code == 411


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_the_command_line_serves_until_sigterm() -> None:
    port = free_port()
    env = {**os.environ, "EMULATOR_FAILURE_RATE": "1.0", "EMULATOR_SEED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "worker.emulators", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(f"{url}/healthz")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        # EMULATOR_FAILURE_RATE=1.0 from the environment: every backend call is a 503.
        assert httpx.put(f"{url}/v1/gates/r1", json={"status": "Active"}).status_code == 503
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=15)

    assert process.returncode == 0, stderr.decode()
    assert b"emulator.listening" in stdout
