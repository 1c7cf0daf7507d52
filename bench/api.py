"""HTTP API benchmark: ``provisioning serve`` against a bare Starlette endpoint, same run.

Run it from the project root::

    .venv/bin/python bench/api.py                  # 10 s per phase, 16 connections
    .venv/bin/python bench/api.py --seconds 5 --connections 8 --profile /tmp/api.prof

What it does:

1. starts a ``redis-server`` of its own (``worker.emulators.embedded``, a free loopback port) and
   creates a submitter API token on it;
2. starts one ``provisioning serve`` process (uvicorn, one event loop) on that Redis, as
   deployed: INFO request logs (to a file), metrics, token checked against Redis on every
   request, each accepted batch kicking a drain task on the broker (no worker runs: the
   events wait in their inboxes, which costs the API nothing more);
3. starts a bare Starlette app on the same uvicorn settings: ``POST /api/v1/events`` reads
   the body and answers 202, no other work;
4. drives both from this process with a small asyncio HTTP/1.1 client over keep-alive
   connections (``--connections``), closed loop (each connection sends its next request
   when the answer came) for ``--seconds``:
   bare single requests, API single events (``application/cloudevents+json``), API batches
   of ``--batch`` events (``application/cloudevents-batch+json``); then open loop at half
   the API's single-event rate for the latency (measured from each request's scheduled
   send time, so a stalled server is not hidden by a client that waits for it);
5. prints the figures against the targets and writes them to
   bench/results/http-<date>.json.

Targets (issue 14): batches of 100 events ≥ 5,000 events/s accepted; single events
≥ 0.5x the bare endpoint's requests/s; p99 ≤ 20 ms at half the single-event rate.
``--profile DIR`` records the API process with py-spy (every thread: the event loop and
the threadpool the routes call Redis and the broker from) during the single-event and the
batch phases and prints where its time goes (a profiled run is slower: compare nothing
with it). Every process started here is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

BARE_APP = """
import sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

async def events(request):
    await request.body()
    return Response(status_code=202)

app = Starlette(routes=[Route("/api/v1/events", events, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None,
            access_log=False, server_header=False, lifespan="off")
"""


# -- a small HTTP/1.1 client -------------------------------------------------------------


class Connection:
    """One keep-alive connection; ``send`` writes a request and reads its answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        start = lower.find(b"content-length:")
        length = 0
        if start >= 0:
            end = lower.find(b"\r\n", start)
            length = int(lower[start + 15:end])
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def request(body: bytes, content_type: str, token: str | None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"POST /api/v1/events HTTP/1.1\r\nHost: bench\r\n{auth}"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


def event(record_id: str | None = None) -> dict[str, Any]:
    return {"specversion": "1.0", "id": uuid.uuid4().hex, "source": "bench",
            "type": "provision.requested", "subject": record_id or str(uuid.uuid4()),
            "data": {"name": "Bench", "channel": {"kind": "teams", "id": str(uuid.uuid4())}}}


def single(token: str | None) -> bytes:
    return request(json.dumps(event()).encode(), "application/cloudevents+json", token)


def batch(token: str | None, size: int) -> bytes:
    return request(json.dumps([event() for _ in range(size)]).encode(),
                   "application/cloudevents-batch+json", token)


async def closed_loop(port: int, make: Callable[[], bytes], connections: int,
                      seconds: float, expect: int) -> dict[str, Any]:
    """Every connection sends its next request as soon as the last was answered."""
    conns = [await Connection.open(port) for _ in range(connections)]
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []
    wrong: list[int] = []

    async def run(conn: Connection) -> None:
        while time.perf_counter() < deadline:
            payload = make()
            started = time.perf_counter()
            status = await conn.send(payload)
            latencies.append(time.perf_counter() - started)
            if status != expect:
                wrong.append(status)

    started = time.perf_counter()
    await asyncio.gather(*(run(conn) for conn in conns))
    elapsed = time.perf_counter() - started
    for conn in conns:
        conn.close()
    return {"requests": len(latencies), "seconds": round(elapsed, 3),
            "requests_per_second": round(len(latencies) / elapsed, 1),
            "p50_ms": _ms(latencies, 0.50), "p99_ms": _ms(latencies, 0.99),
            "unexpected_statuses": sorted(set(wrong)), "unexpected": len(wrong)}


async def open_loop(port: int, make: Callable[[], bytes], rate: float, seconds: float,
                    connections: int, expect: int) -> dict[str, Any]:
    """Requests scheduled at ``rate`` per second; latency from the scheduled time."""
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await Connection.open(port))
    latencies: list[float] = []
    wrong: list[int] = []
    count = int(rate * seconds)
    payloads = [make() for _ in range(count)]
    begin = time.perf_counter() + 0.1

    async def one(number: int) -> None:
        scheduled = begin + number / rate
        conn = await pool.get()
        try:
            status = await conn.send(payloads[number])
        finally:
            pool.put_nowait(conn)
        latencies.append(time.perf_counter() - scheduled)
        if status != expect:
            wrong.append(status)

    tasks = []
    for number in range(count):
        delay = begin + number / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(number)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait().close()
    return {"rate": round(rate, 1), "requests": count, "p50_ms": _ms(latencies, 0.50),
            "p90_ms": _ms(latencies, 0.90), "p99_ms": _ms(latencies, 0.99),
            "max_ms": round(max(latencies) * 1000, 2),
            "unexpected_statuses": sorted(set(wrong)), "unexpected": len(wrong)}


def _ms(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


# -- processes -----------------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process so far (/proc), 0 when unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_up(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        try:
            httpx.post(f"http://127.0.0.1:{port}/api/v1/events", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not answer within 30 s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# -- profiling (py-spy) --------------------------------------------------------------------

LIBRARIES = {"uvicorn": ("uvicorn/", "h11/", "httptools/"), "starlette": ("starlette/",),
             "anyio (threadpool)": ("anyio/",), "redis-py": ("redis/",),
             "celery/kombu (kick)": ("celery/", "kombu/"), "structlog": ("structlog/",),
             "prometheus": ("prometheus_client/",), "json": ("json/",),
             "worker.http": ("worker/http/",), "statemachine": ("statemachine/",),
             "asyncio": ("asyncio/",)}


@contextlib.contextmanager
def profiling(folder: str | None, pid: int, tag: str) -> Iterator[None]:
    """py-spy the process while the block runs; print its summary after."""
    if folder is None:
        yield
        return
    output = Path(folder) / f"api-{tag}.txt"
    output.parent.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
                            str(pid), "--rate", "200", "--gil", "--format", "raw", "--output",
                            str(output)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
        summarize(output, tag)


def summarize(path: Path, tag: str, top: int = 12) -> None:
    """Inclusive share by library and the busiest leaf frames, of the samples that ran."""
    total = 0
    libraries: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    if not path.exists():
        print(f"profile {tag}: py-spy wrote nothing")
        return
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count, frames = int(count_text), stack.split(";")
        total += count
        leaves[frames[-1].split(" (")[0] + " " + _file(frames[-1])] += count
        for label, marks in LIBRARIES.items():
            if any(mark in frame for frame in frames for mark in marks):
                libraries[label] += count
    print(f"\nprofile {tag}: {total} samples ({path})")
    for label, count in libraries.most_common():
        print(f"  {100 * count / max(total, 1):5.1f}%  {label} (inclusive)")
    print("  busiest leaves:")
    for name, count in leaves.most_common(top):
        print(f"  {100 * count / max(total, 1):5.1f}%  {name}")


def _file(frame: str) -> str:
    inside = frame.rpartition("(")[2].rstrip(")")
    return inside.rsplit("site-packages/", 1)[-1].rsplit("/python3.11/", 1)[-1]


def main() -> int:  # noqa: PLR0915 - the phases in order, as the docstring lists them
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase (default 10)")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections")
    parser.add_argument("--batch", type=int, default=100, help="events per batch request")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the API process into DIR")
    parser.add_argument("--no-write", action="store_true", help="do not write results JSON")
    args = parser.parse_args()

    from worker.emulators import embedded
    from worker.http.auth import RedisTokenStore, Role
    from worker.keys import Keys

    redis_server = embedded.start("redis-server")
    logdir = Path(tempfile.mkdtemp(prefix="bench-http-"))
    started: list[subprocess.Popen[bytes]] = []
    try:
        import redis

        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        token = RedisTokenStore(client, Keys("bench")).create("bench", Role.SUBMITTER).token
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONING_")}
        env.update({"PROVISIONING_REDIS_URL": redis_server.url,
                    "PROVISIONING_KEY_PREFIX": "bench", "PROVISIONING_LOG_FORMAT": "json",
                    "PROVISIONING_API_MAX_BODY_BYTES": str(4 * 1024 * 1024)})
        api_port, bare_port = embedded.free_port(), embedded.free_port()
        serve = [str(Path(sys.executable).with_name("provisioning")), "serve",
                 "--port", str(api_port)]
        with open(logdir / "api.log", "wb") as log:
            started.append(subprocess.Popen(serve, cwd=ROOT, env=env, stdout=log,
                                            stderr=subprocess.STDOUT))
        with open(logdir / "bare.log", "wb") as log:
            started.append(subprocess.Popen([sys.executable, "-c", BARE_APP, str(bare_port)],
                                            cwd=ROOT, env=env, stdout=log,
                                            stderr=subprocess.STDOUT))
        wait_up(api_port, started[0], "provisioning serve")
        wait_up(bare_port, started[1], "the bare endpoint")

        redis_pid = redis_server._process.pid if redis_server._process is not None else None
        pids = {"api": started[0].pid, "bare": started[1].pid, "redis": redis_pid}

        def phase(name: str, coro: Any) -> dict[str, Any]:
            before = {who: cpu_seconds(pid) for who, pid in pids.items()}
            result: dict[str, Any] = asyncio.run(coro)
            result["cpu_seconds"] = {who: round(cpu_seconds(pid) - before[who], 2)
                                     for who, pid in pids.items()}
            print(f"{name:<28} {json.dumps(result)}", flush=True)
            return result

        asyncio.run(closed_loop(api_port, lambda: single(token), 4, 1.0, 202))  # warm up
        asyncio.run(closed_loop(bare_port, lambda: single(None), 4, 1.0, 202))
        bare = phase("bare single", closed_loop(bare_port, lambda: single(None),
                                                args.connections, args.seconds, 202))
        with profiling(args.profile, started[0].pid, "single"):
            api_single = phase("api single event", closed_loop(
                api_port, lambda: single(token), args.connections, args.seconds, 202))
        with profiling(args.profile, started[0].pid, "batch"):
            api_batch = phase(f"api batch of {args.batch}", closed_loop(
                api_port, lambda: batch(token, args.batch), args.connections, args.seconds,
                202))
        half = api_single["requests_per_second"] / 2
        latency = phase("api single, open loop", open_loop(
            api_port, lambda: single(token), half, args.seconds, args.connections * 4, 202))
        bare_latency = phase("bare single, open loop", open_loop(
            bare_port, lambda: single(None), half, args.seconds, args.connections * 4, 202))
    finally:
        for process in reversed(started):
            stop(process)
        redis_server.stop()

    events_per_second = api_batch["requests_per_second"] * args.batch
    ratio = api_single["requests_per_second"] / max(bare["requests_per_second"], 1e-9)
    targets = {
        "batch_events_per_second": {"value": round(events_per_second), "target": 5000,
                                    "met": events_per_second >= 5000},
        "single_vs_bare": {"value": round(ratio, 3), "target": 0.5, "met": ratio >= 0.5},
        "p99_ms_at_half_rate": {"value": latency["p99_ms"], "target": 20.0,
                                "met": latency["p99_ms"] <= 20.0},
    }
    print()
    for name, figure in targets.items():
        print(f"{name:<26} {figure['value']:>10}  target {figure['target']:<6} "
              f"{'met' if figure['met'] else 'MISSED'}")
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_before": os.getloadavg()},
        "settings": vars(args), "bare": bare, "api_single": api_single,
        "api_batch": api_batch, "api_latency_half_rate": latency,
        "bare_latency_same_rate": bare_latency, "targets": targets,
        "median_single_ms": statistics.median([api_single["p50_ms"]]),
    }
    if not args.no_write and not args.profile:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"http-{datetime.now(UTC).date().isoformat()}.json"
        path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"\nwritten to {path.relative_to(ROOT)}")
    return 0 if all(f["met"] for f in targets.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
