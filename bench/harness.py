"""Real ``celery -A worker.app worker`` processes for bench/memory.py and bench/scaling.py.

Built on bench/throughput.py (imported, not copied): its ``Context`` starts the worker with
the benchmark's environment (``PROVISIONING_LOG_LEVEL=WARNING``, JSON logs, a key prefix, a
free metrics port) and its ``Processes`` stops every process by its pid. This module adds
the backend emulator served over HTTP from the benchmark's process (TCP_NODELAY, as
throughput.py serves it), a Context on a Redis of our own, and what /proc says about a
worker's memory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import throughput
from throughput import Context, Processes, Started, children


@dataclass
class Harness:
    ctx: Context
    server: Any  # the emulator's HTTP server


@contextlib.contextmanager
def harness(url: str, prefix: str, logdir: Path | None = None,
            max_runtime: float = 3600.0) -> Iterator[Harness]:
    """A throughput.Context on ``url`` (a Redis this run started) with the emulator served
    from this process; every worker started through it is stopped on the way out."""
    from worker.emulators import Emulator, serve

    server = serve("127.0.0.1", 0, Emulator(latency_ms=0, failure_rate=0.0))
    # http.server answers in two send()s; with Nagle on, each backend call would wait
    # ~40 ms for a delayed ACK (bench/README.md, "Why TCP_NODELAY on the emulator").
    server.RequestHandlerClass = type("NoDelayHandler", (server.RequestHandlerClass,),
                                      {"disable_nagle_algorithm": True})
    host, port = server.server_address[:2]
    folder = logdir or Path(tempfile.mkdtemp(prefix="bench-workers-"))
    folder.mkdir(parents=True, exist_ok=True)
    throughput.configure_clients(url)
    procs = Processes()
    ctx = Context(argparse.Namespace(), url, redis.Redis.from_url(url, decode_responses=True),
                  server.emulator, f"http://{host}:{port}", procs, folder, prefix,
                  time.monotonic() + max_runtime, created_db=False)
    try:
        yield Harness(ctx, server)
    finally:
        procs.stop_all()
        server.shutdown()
        ctx.client.close()


def start_worker(ctx: Context, concurrency: int, tag: str, env: dict[str, str],
                 timeout: float = 60.0) -> Started:
    """Start a worker and wait until its pool processes exist (imports done, forked)."""
    started = ctx.start_worker("worker.app", concurrency, tag, env)
    deadline = time.monotonic() + timeout
    while len(children(started.pid)) < concurrency:
        ctx.procs.check(started)
        if time.monotonic() > deadline:
            raise throughput.BenchError(f"{tag}: no pool processes after {timeout} s; "
                                        f"see {started.log}")
        time.sleep(0.2)
    return started


def _kib(text: str, name: str) -> int:
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def process_memory(pid: int) -> dict[str, int] | None:
    """VmRSS, VmHWM (peak RSS) and Pss of one process, in KiB (None if it is gone).

    Pss divides each page shared with other processes (a prefork child shares its
    parent's pages until either writes them) among them, so the Pss of a main process
    and its children add up to what they cost together; their RSS counts shared pages
    once per process."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    return {"rss_kib": _kib(status, "VmRSS"), "hwm_kib": _kib(status, "VmHWM"),
            "pss_kib": _kib(rollup, "Pss")}


def worker_memory(started: Started) -> dict[str, Any]:
    """The worker's main process and each pool child, and their sums."""
    main = process_memory(started.pid)
    pool = [m for m in (process_memory(pid) for pid in sorted(children(started.pid)))
            if m is not None]
    every = ([main] if main else []) + pool
    return {"main": main, "pool": pool,
            "total_rss_kib": sum(m["rss_kib"] for m in every),
            "total_pss_kib": sum(m["pss_kib"] for m in every)}


def worker_env(ctx: Context, key_prefix: str, **settings: str) -> dict[str, str]:
    """throughput.Context.env plus PROVISIONING_<NAME> settings."""
    env = ctx.env(key_prefix)
    env.update({f"PROVISIONING_{name.upper()}": value for name, value in settings.items()})
    return env


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))
