"""A real ``provisioning serve`` process for the integration tests, started with a
Cluster's environment (its Redis, broker and settings) and stopped by its pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

from worker.emulators.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]


class ServeProcess:
    """``provisioning serve --port <free port>`` in a session of its own."""

    def __init__(self, env: Mapping[str, str], log: Path, *, args: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        script = Path(sys.executable).with_name("provisioning")
        with open(log, "ab") as stream:
            self.process = subprocess.Popen(
                [str(script), "serve", "--host", "127.0.0.1", "--port", str(self.port), *args],
                cwd=ROOT, env=dict(env), stdout=stream, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.pid = self.process.pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with {self.process.returncode}:\n"
                                   f"{self.tail()}")
            with suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"serve did not answer /healthz within {timeout:.0f} s:\n"
                           f"{self.tail()}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait; SIGKILL what is left. Returns the exit code."""
        if self.process.poll() is None:
            with suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        return self.process.returncode

    def tail(self, lines: int = 60) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@contextmanager
def serving(env: Mapping[str, str], workdir: Path, *, args: Sequence[str] = (),
            ) -> Iterator[ServeProcess]:
    server = ServeProcess(env, workdir / f"serve-{len(list(workdir.glob('serve-*')))}.log",
                          args=args)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
