"""Memory benchmark: Redis bytes per stored record, what a long-lived record costs, and the
resident memory of real worker processes.

Run it from the project root::

    .venv/bin/python bench/memory.py                      # 10,000 and 100,000 records
    .venv/bin/python bench/memory.py --records 2000 --long-events 300 --worker-events 1000
    .venv/bin/python bench/memory.py --help

Three parts, each on a ``redis-server`` of its own (``worker.emulators.embedded``, a free
loopback port, no persistence), stopped by its pid at the end:

1. *Records.* For each ``--records`` size, a fresh server is filled through the real code
   path (bench/population.py: ``Service.accept_all`` + ``Service.drain``, the emulator as an
   in-process httpx transport; ``--populate clone`` copies template records instead, much
   faster) with the default history bound. Reported: ``used_memory`` after - before,
   per record; keys per record; ``MEMORY USAGE … SAMPLES 0`` of each kind of key on a sample
   of records of each life, and of the shared index sets divided by the records.
2. *A long-lived record.* One record takes ``--long-events`` GateKeeper reports through the
   real path (Inactive/Error and Active/Running in turn), ``--long-interval`` simulated
   seconds apart, its dedupe window ``--long-window`` seconds; at checkpoints, the size of
   its keys. The history stops at its bound and the window holds the marks of the reports
   within it: the record stays bounded.
3. *Worker memory.* A real ``celery -A worker.app worker --concurrency C`` (bench/harness.py,
   on bench/throughput.py): VmRSS and Pss of its main process and pool children once
   started, then after each ``--worker-events`` total of events of throughput.py's mix
   (submitted through ``worker.api.submit_events``).

Prints tables and writes JSON to bench/results/memory-<date>.json.
"""

from __future__ import annotations

# isort: split
import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import population
import redis
import throughput
from harness import cpu_count, harness, start_worker, worker_env, worker_memory
from population import (
    LIFE_NAMES,
    Progress,
    life_of,
    memory_usage,
    record_id,
    used_memory,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PREFIX = "provisioning"
PER_RECORD = ("record", "window")  # the record list (record, marks, history); spilled marks


# -- part 1: records ----------------------------------------------------------------------


def populate(url: str, args: argparse.Namespace, size: int) -> dict[str, Any]:
    """Fill a fresh server with ``size`` records; returns the memory it took."""
    from worker.emulators import Emulator

    client = redis.Redis.from_url(url, decode_responses=True)
    emulator = Emulator()
    # Templates run first in both modes: the scripts are loaded and the clients connected
    # before the baseline, so the delta is the records' own.
    templates = population.make_templates(url, PREFIX, emulator, args.seed)
    # A 1 s lease: the claims a submit leaves (one per record, for a lease time) are gone
    # before the reading, as they are a lease time after any burst.
    service = population.make_service(url, PREFIX, emulator, lease_seconds=1.0)
    service.store.ping()
    service.store.ensure_format()
    before = used_memory(client)
    began, cpu = time.monotonic(), time.process_time()
    progress = Progress(f"{args.populate} {size:,}", 0, size)
    if args.populate == "real":
        population.populate_real(service, emulator, args.seed, 0, size, progress,
                                 life=args.life)
    else:
        population.populate_clone(client, PREFIX, templates, args.seed, 0, size,
                                  progress=progress, life=args.life)
    seconds, cpu_s = time.monotonic() - began, time.process_time() - cpu
    service.close()
    service.store.client.close()
    wait_expired(client)
    after = used_memory(client)
    keys = int(client.dbsize())
    result = {
        "records": size, "populate": args.populate, "life": args.life or "mix",
        "populate_s": round(seconds, 1),
        "populate_cpu_s": round(cpu_s, 1), "keys": keys,
        "keys_per_record": round(keys / size, 3),
        "used_memory_before": before["used_memory"], "used_memory_after": after["used_memory"],
        "bytes_per_record": round((after["used_memory"] - before["used_memory"]) / size, 1),
        "rss_bytes_per_record": round(
            (after["used_memory_rss"] - before["used_memory_rss"]) / size, 1),
        "breakdown": breakdown(client, args, size),
    }
    client.close()
    return result


def wait_expired(client: redis.Redis, timeout: float = 120.0) -> None:
    """Until no key with a TTL is left (the submit claims of a 1 s lease)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if int(client.info("keyspace").get("db0", {}).get("expires", 0)) == 0:
            return
        time.sleep(0.5)


def breakdown(client: redis.Redis, args: argparse.Namespace, size: int) -> dict[str, Any]:
    """MEMORY USAGE of each record's own key (a sample per life), and of every per-shard
    key (indexes, links, schedules) divided by the records."""
    from worker.keys import Keys

    keys = Keys(PREFIX)
    rng = random.Random(args.seed)
    by_life: dict[str, dict[str, float]] = {}
    lives = [args.life] if args.life else list(LIFE_NAMES)
    for life in lives:
        pool = [i for i in range(size) if (args.life or life_of(i)) == life]
        sample = rng.sample(pool, min(args.sample, len(pool)))
        totals = dict.fromkeys(PER_RECORD, 0)
        for i in sample:
            rid = record_id(args.seed, i)
            totals["record"] += memory_usage(client, keys.record(rid))
            totals["window"] += memory_usage(client, keys.window(rid))
        by_life[life] = {name: round(total / len(sample), 1) for name, total in totals.items()}
        by_life[life]["records"] = len(pool)
    mean = {name: round(sum(by_life[life][name] * by_life[life]["records"]
                            for life in lives) / size, 1) for name in PER_RECORD}
    shared: dict[str, int] = {}
    for shard in range(keys.shards):
        base = keys.base(shard)
        for key in client.scan_iter(match=f"{base}*", count=1000):
            kind = key[len(base):].split(":", 1)[0]
            if kind in ("r", "d", "i", "l", "c"):
                continue  # a record's own keys
            name = {"x": "status/kind index", "k": "links", "calling": "calling index"}.get(
                kind, kind)
            shared[name] = shared.get(name, 0) + memory_usage(client, key)
    return {"per_record_key_bytes": mean, "by_life": by_life,
            "shared_bytes": shared,
            "shared_bytes_per_record": round(sum(shared.values()) / size, 1),
            "shared_per_record": {name: round(value / size, 1)
                                  for name, value in shared.items()},
            "keys_sum_bytes_per_record": round(sum(mean.values())
                                               + sum(shared.values()) / size, 1)}


# -- part 2: a long-lived record ----------------------------------------------------------


class SimulatedWall:
    """The dedupe window's clock for the long-lived record: ``--long-interval`` seconds
    pass per event, so 100,000 reports a second apart take minutes, not a day."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def long_lived(url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One record through ``--long-events`` GateKeeper reports (Inactive/Error and
    Active/Running in turn, each applied), ``--long-interval`` simulated seconds apart, the
    dedupe window ``--long-window`` seconds; its keys' sizes at checkpoints."""
    from worker.emulators import Emulator
    from worker.keys import Keys
    from worker.store import codec

    prefix = "bench-long"
    emulator = Emulator()
    service = population.make_service(url, prefix, emulator,
                                      dedupe_window_seconds=args.long_window)
    wall = SimulatedWall()
    service.store.wall = wall
    client = redis.Redis.from_url(url, decode_responses=True)
    keys = Keys(prefix)
    i = 0
    rid = record_id(args.seed, i)
    population.apply_rounds(service, [population.life_events(args.seed, i, "provisioned",
                                                             "whatsapp")[0]])
    checkpoints = sorted({c for c in (100, 1000, 3000, 10000, 30000, args.long_events)
                          if c <= args.long_events})
    rows: list[dict[str, Any]] = []
    events = 0
    began = time.monotonic()
    try:
        for target in checkpoints:
            while events < target:
                events += 1
                wall.now += args.long_interval
                data = ({"status": "Inactive", "reason": "Error",
                         "details": "bench: the gate's health check failed"}
                        if events % 2 else {"status": "Active", "reason": "Running"})
                population.apply_rounds(service, [[population.event(
                    i, events, "gatekeeper.reported", rid, data)]])
                if events % 500 == 0:
                    emulator.reset()
            blob = client.lindex(keys.record(rid), 1) or ""
            marks = (int(client.zcard(keys.window(rid))) if blob == "*"
                     else len(codec.window_marks(blob)))
            sizes = {"record": memory_usage(client, keys.record(rid)),
                     "window": memory_usage(client, keys.window(rid))}
            row = {"events": events, "history_entries": int(client.llen(keys.record(rid))) - 2,
                   "marks": marks, "bytes": sizes, "total_bytes": sum(sizes.values()),
                   "seconds": round(time.monotonic() - began, 1)}
            rows.append(row)
            print(f"  long-lived record: {events} events, {row['history_entries']} history "
                  f"entries, {marks} marks, {row['total_bytes']:,} bytes", flush=True)
    finally:
        service.close()
        service.store.client.close()
        client.close()
    return rows


def growth(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Bytes per event between the last two checkpoints (≈ 0 once the history is at its
    bound and the window full), and the largest total seen."""
    if len(rows) < 2:
        return {}
    a, b = rows[-2], rows[-1]
    return {"bytes_per_event": round((b["total_bytes"] - a["total_bytes"])
                                     / (b["events"] - a["events"]), 3),
            "max_total_bytes": max(r["total_bytes"] for r in rows),
            "bytes_per_history_entry": round(b["bytes"]["record"] / max(1, b["history_entries"]),
                                             1)}


# -- part 3: worker memory -----------------------------------------------------------------


def worker_part(url: str, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """RSS/Pss of a real worker: started, then after each total of events (into rows)."""
    from statemachine import StatusReason
    from worker.keys import Keys
    from worker.settings import Settings

    stamp = datetime.now(UTC)
    with harness(url, f"bench-memory-{stamp:%Y%m%d%H%M%S}") as h:
        ctx = h.ctx
        env = worker_env(ctx, f"{ctx.prefix}:worker")
        keys = Keys(env["PROVISIONING_KEY_PREFIX"])
        submit = throughput.Submitter(throughput.NORMAL, Settings.from_env(env), 50)
        started = start_worker(ctx, args.concurrency, "memory", env)
        try:
            time.sleep(args.settle)
            rows.append({"events": 0, "state": "started, idle", **worker_memory(started)})
            print_worker_row(rows[-1])
            done = 0
            running = deprovisioned = errors = 0
            for stage, total in enumerate(args.worker_event_list):
                n = total - done
                # throughput.py's mix: the seeds are provisioned first (they count as
                # events); then the measured events, 80 % of them new records.
                work = throughput.make_workload(
                    f"m{stage}", max(2, round(n / (1 + args.deprovision_share
                                                   + args.report_share))),
                    deprovision_share=args.deprovision_share, report_share=args.report_share,
                    warmup=0, seed=args.seed)
                running += work.seeded
                submit(work.seed)
                settle(ctx, started, keys, running, deprovisioned, errors, len(work.seed))
                running += work.provisions - work.deprovisions - work.reports
                deprovisioned += work.deprovisions
                errors += work.reports
                began = time.monotonic()
                submit(work.events)
                settle(ctx, started, keys, running, deprovisioned, errors, len(work.events))
                seconds = time.monotonic() - began
                done += len(work.seed) + len(work.events)
                ctx.emulator.reset()
                time.sleep(args.settle)
                records = sum(int(ctx.client.scard(key)) for key in keys.index_sets())
                rows.append({"events": done, "records": records,
                             "state": f"idle after {done:,} events "
                                      f"({len(work.events) / seconds:.0f} events/s)",
                             "running": sum(int(ctx.client.scard(key)) for key in
                                            keys.index_sets(status=StatusReason.RUNNING)),
                             **worker_memory(started)})
                print_worker_row(rows[-1])
        finally:
            ctx.procs.stop(started)
            submit.close()


def settle(ctx: Any, started: Any, keys: Any, running: int, deprovisioned: int,
           errors: int, events: int) -> None:
    seconds = 60 + events / 20  # 20 events/s at the least
    if not throughput.wait_settled(ctx, started, keys, running=running,
                                   deprovisioned=deprovisioned, errors=errors,
                                   deadline=ctx.deadline(seconds)):
        raise throughput.BenchError(f"the worker did not settle; see {started.log}")
    # The records can settle before the queue empties: in a backlog, the recovery timer
    # kicks again every record still pending after recovery_interval (duplicate drain
    # tasks, each a no-op by then).
    if not ctx.queue_idle(started, seconds):
        raise throughput.BenchError("the Celery queue did not empty")


# -- output --------------------------------------------------------------------------------


def mib(kib: int) -> str:
    return f"{kib / 1024:7.1f}"


def print_worker_row(row: dict[str, Any]) -> None:
    main = row["main"] or {"rss_kib": 0, "pss_kib": 0}
    pool = " ".join(f"{mib(p['rss_kib']).strip()}/{mib(p['pss_kib']).strip()}"
                    for p in row["pool"])
    print(f"  worker {row['state']}: main RSS {mib(main['rss_kib'])} MiB (Pss "
          f"{mib(main['pss_kib']).strip()}), pool RSS/Pss MiB {pool}; total RSS "
          f"{mib(row['total_rss_kib']).strip()} MiB, total Pss "
          f"{mib(row['total_pss_kib']).strip()} MiB", flush=True)


def print_records(sizes: list[dict[str, Any]]) -> None:
    print("\nRedis memory per record (default history bound; after the submit claims "
          "expired):")
    print(f"{'records':>10} {'life':>12} {'populate':>9} {'s':>7} {'keys/rec':>9} "
          f"{'B/record':>9} {'RSS B/rec':>10} {'sum of keys':>12}")
    for s in sizes:
        print(f"{s['records']:>10,} {s['life']:>12} {s['populate']:>9} {s['populate_s']:>7} "
              f"{s['keys_per_record']:>9} {s['bytes_per_record']:>9,.0f} "
              f"{s['rss_bytes_per_record']:>10,.0f} "
              f"{s['breakdown']['keys_sum_bytes_per_record']:>12,.0f}")
    last = sizes[-1]["breakdown"]
    print(f"\nMEMORY USAGE per key, bytes (sample of {sizes[-1]['records']:,} records):")
    lives = list(last["by_life"])
    print(f"{'key':<14}" + "".join(f"{life:>15}" for life in lives) + f"{'mean':>10}")
    for name in PER_RECORD:
        print(f"{name:<14}" + "".join(f"{last['by_life'][life][name]:>15,.0f}"
                                     for life in lives)
              + f"{last['per_record_key_bytes'][name]:>10,.0f}")
    for name, value in last["shared_per_record"].items():
        print(f"{name:<24} {value:>8,.1f} per record (all shards)")


def print_long(rows: list[dict[str, Any]], slopes: dict[str, Any]) -> None:
    print("\nA long-lived record (history bound 1000, GateKeeper reports):")
    print(f"{'events':>7} {'entries':>8} {'marks':>6} {'record B':>10} {'window B':>9} "
          f"{'total B':>10}")
    for r in rows:
        b = r["bytes"]
        print(f"{r['events']:>7} {r['history_entries']:>8} {r['marks']:>6} "
              f"{b['record']:>10,} {b['window']:>9,} {r['total_bytes']:>10,}")
    if slopes:
        print(f"  growth between the last two checkpoints: {slopes['bytes_per_event']} B per "
              f"event; largest total {slopes['max_total_bytes']:,} B")


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/memory.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--records", default="10000,100000",
                        help="comma-separated numbers of records (0: skip the part)")
    parser.add_argument("--populate", choices=("real", "clone"), default="real",
                        help="real: accept_all + drain per record; clone: copies of template "
                             "records, same keys (bench/population.py)")
    parser.add_argument("--sample", type=int, default=200,
                        help="records per life whose keys MEMORY USAGE measures")
    parser.add_argument("--life", choices=LIFE_NAMES,
                        help="every record lives this life (flapped: create, provision, "
                             "provisioned, two GateKeeper reports); default: the mix")
    parser.add_argument("--long-events", type=int, default=100000,
                        help="GateKeeper reports to the long-lived record (0: skip the part)")
    parser.add_argument("--long-window", type=float, default=60.0,
                        help="its dedupe window, seconds (PROVISIONING_DEDUPE_WINDOW_SECONDS)")
    parser.add_argument("--long-interval", type=float, default=1.0,
                        help="simulated seconds between two of its reports")
    parser.add_argument("--worker-events", default="10000,50000",
                        help="comma-separated totals of events at which the worker's memory "
                             "is read (empty: skip the part)")
    parser.add_argument("--concurrency", type=int, default=cpu_count(),
                        help="prefork pool processes of the worker")
    parser.add_argument("--deprovision-share", type=float, default=0.1)
    parser.add_argument("--report-share", type=float, default=0.1)
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds the worker idles before each reading")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path,
                        help="JSON file (default bench/results/memory-<date>.json)")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(v) for v in args.records.split(",") if v.strip() and int(v)]
        args.worker_event_list = sorted(int(v) for v in args.worker_events.split(",")
                                        if v.strip())
    except ValueError:
        parser.error("--records and --worker-events: comma-separated integers")
    return args


def run(args: argparse.Namespace) -> int:
    from worker.logs import configure
    from worker.settings import Settings

    configure(Settings(log_level="WARNING", log_format="json"))
    stamp = datetime.now(UTC)
    document: dict[str, Any] = {
        "benchmark": "bench/memory.py", "started_at": stamp.isoformat(),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "history_limit": Settings().history_limit, "source": throughput.source_state()}
    output = args.output or RESULTS / f"memory-{stamp:%Y-%m-%d}.json"
    try:
        parts(args, document)
    finally:  # what was measured is kept, even when a later part fails
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"\nresults: {output}")
    return 0


def parts(args: argparse.Namespace, document: dict[str, Any]) -> None:
    from worker.emulators import embedded

    sizes: list[dict[str, Any]] = []
    document["records"] = sizes
    for size in args.sizes:
        with embedded.start("redis-server") as server:
            if not document.get("machine"):
                document["machine"] = machine(server.url)
                print_machine(document["machine"])
            sizes.append(populate(server.url, args, size))
    if sizes:
        print_records(sizes)
    if args.long_events:
        with embedded.start("redis-server") as server:
            print("\nlong-lived record:", flush=True)
            rows = long_lived(server.url, args)
        document["long_lived"] = {"checkpoints": rows, "growth": growth(rows)}
        print_long(rows, document["long_lived"]["growth"])
    if args.worker_event_list:
        with embedded.start("redis-server") as server:
            if not document.get("machine"):
                document["machine"] = machine(server.url)
                print_machine(document["machine"])
            print(f"\nworker memory (celery -A worker.app worker --concurrency "
                  f"{args.concurrency}):", flush=True)
            readings: list[dict[str, Any]] = []
            document["worker"] = readings
            worker_part(server.url, args, readings)


def machine(url: str) -> dict[str, Any]:
    """throughput.py's description of the machine, plus its memory."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        info = throughput.machine(argparse.Namespace(client=client))  # type: ignore[arg-type]
    finally:
        client.close()
    meminfo = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
    info["memory_gib"] = round(int(meminfo[1]) / 1024 / 1024, 1)
    return info


def print_machine(info: dict[str, Any]) -> None:
    print(f"machine: {info['nproc']} CPUs, {info['cpu_model']}, {info['memory_gib']} GiB; "
          f"Python {info['python']}, Celery {info['celery']}, redis-server "
          f"{info['redis_server']}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    return throughput.entry(parse_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
