"""An embedded Redis for the demo and the tests, when no Redis URL is configured.

Preference: a ``redis-server`` binary on the PATH (the real server, started on a free
loopback port with no persistence), else fakeredis's TCP server in a thread (pure Python,
installed with the package, runs the store's Lua scripts through lupa). docs/configuration.md says
what each costs.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from fakeredis import TcpFakeServer


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedRedis:
    """A Redis server this process started on 127.0.0.1; ``stop()`` ends it."""

    url: str
    engine: str
    _process: subprocess.Popen[bytes] | None = None
    _server: Any = None
    _thread: threading.Thread | None = None
    _dir: Any = field(default=None, repr=False)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(prefer: str = "auto") -> EmbeddedRedis:
    """Start an embedded Redis: ``prefer`` is "auto", "redis-server" or "fakeredis"."""
    binary = shutil.which("redis-server")
    if prefer in ("auto", "redis-server") and binary:
        return _start_redis_server(binary)
    if prefer == "redis-server":
        raise RuntimeError("redis-server is not on the PATH")
    return _start_fakeredis()


def _start_redis_server(binary: str) -> EmbeddedRedis:
    port = free_port()
    workdir = tempfile.TemporaryDirectory(prefix="provisioning-redis-")
    process = subprocess.Popen(  # noqa: S603 - our own argument list, no shell
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir.name, "--maxmemory-policy", "noeviction"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    embedded = EmbeddedRedis(url, "redis-server", _process=process, _dir=workdir)
    _wait(url, embedded)
    return embedded


def _start_fakeredis() -> EmbeddedRedis:
    port = free_port()
    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="fakeredis", daemon=True)
    thread.start()
    url = f"redis://127.0.0.1:{port}/0"
    embedded = EmbeddedRedis(url, "fakeredis", _server=server, _thread=thread)
    _wait(url, embedded)
    return embedded


def _wait(url: str, embedded: EmbeddedRedis, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    embedded.stop()
                    raise RuntimeError(
                        f"embedded Redis ({embedded.engine}) did not start") from None
                time.sleep(0.05)
    finally:
        client.close()
