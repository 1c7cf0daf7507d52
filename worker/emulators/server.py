"""The backends emulator (and its Dataverse) over real HTTP: :class:`EmulatorServer`,
:func:`serve` for tests and benchmarks, and :func:`main` for ``python -m worker.emulators``.

Run it as a server with ``python -m worker.emulators --host 127.0.0.1 --port 8080``; the
environment variables EMULATOR_FAILURE_RATE, EMULATOR_LATENCY_MS and EMULATOR_SEED give the
defaults of the matching options, and the EMULATOR_DATAVERSE_* variables configure the
Dataverse emulator (``DataverseEmulator.from_env``).
"""

from __future__ import annotations

import argparse
import os
import signal
import ssl
from collections.abc import Mapping, Sequence
from email.message import Message
from types import FrameType

import structlog

from worker.emulators.aserving import AsyncReplyServer
from worker.emulators.backends import Emulator
from worker.emulators.dataverse import DataverseEmulator
from worker.emulators.serving import Reply

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "EmulatorServer", "main", "serve"]

log = structlog.get_logger(__name__)

DEFAULT_HOST = "127.0.0.1"  # loopback unless told otherwise: the emulator has no auth
DEFAULT_PORT = 8080


class EmulatorServer(AsyncReplyServer):
    """``emulator`` over real HTTP, from one event loop (its latency is awaited, not slept
    in a thread per request). ``start()`` serves from a daemon thread."""

    thread_name = "backend-emulator"

    def __init__(self, address: tuple[str, int], emulator: Emulator, *,
                 nodelay: bool = True, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(address, self._respond, nodelay=nodelay, tls=tls)
        self.emulator = emulator

    async def _respond(self, method: str, raw_path: str, body: bytes,
                       headers: Message) -> Reply:
        return await self.emulator.handle_async(
            method, raw_path, body, idempotency_key=headers.get("Idempotency-Key"),
            headers=dict(headers.items()))


def serve(
    host: str = DEFAULT_HOST, port: int = 0, emulator: Emulator | None = None
) -> EmulatorServer:
    """Serve ``emulator`` (a new default one if None) on ``host:port`` from a thread.

    Port 0 picks a free port; read it from ``.server_address``. Stop with ``.shutdown()``.
    """
    return EmulatorServer((host, port), emulator or Emulator()).start()


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """``python -m worker.emulators``: serve until SIGINT or SIGTERM.

    Options not given on the command line come from EMULATOR_FAILURE_RATE,
    EMULATOR_LATENCY_MS and EMULATOR_SEED; a bad value is a usage error (exit 2).
    """
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="python -m worker.emulators",
                                     description="Emulate the provisioner, GateKeeper and "
                                                 "calling-test backends over HTTP.")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to bind (default: %(default)s, loopback only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="port to bind (default: %(default)s)")
    parser.add_argument("--failure-rate", type=float,
                        help="share of requests answered 503 (env EMULATOR_FAILURE_RATE)")
    parser.add_argument("--latency-ms", type=float,
                        help="delay before every answer (env EMULATOR_LATENCY_MS)")
    parser.add_argument("--seed", type=int, help="seed of the failure draws (env EMULATOR_SEED)")
    args = parser.parse_args(argv)
    try:
        defaults = Emulator.from_env(env)
        emulator = Emulator(
            failure_rate=defaults.failure_rate if args.failure_rate is None
            else args.failure_rate,
            latency_ms=defaults.latency_ms if args.latency_ms is None else args.latency_ms,
            seed=defaults.seed if args.seed is None else args.seed,
            dataverse=DataverseEmulator.from_env(env),
        )
        server = EmulatorServer((args.host, args.port), emulator)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # As PID 1 in a container SIGTERM has no default action; make `docker stop` prompt.
    signal.signal(signal.SIGTERM, stop)
    log.info("emulator.listening", url=server.url, failure_rate=emulator.failure_rate,
             latency_ms=emulator.latency_ms, seed=emulator.seed)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("emulator.stopping")
    finally:
        server.server_close()
    return 0
