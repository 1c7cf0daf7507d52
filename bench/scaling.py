"""Scaling benchmark: the cost per event, and of each beat sweep, as stored records grow.

Run it from the project root::

    .venv/bin/python bench/scaling.py                              # 10k, 100k, 300k, 1M
    .venv/bin/python bench/scaling.py --sizes 2000,20000 --events 500
    .venv/bin/python bench/scaling.py --help

On one ``redis-server`` of its own (``worker.emulators.embedded``, a free loopback port, no
persistence), for each size N in ``--sizes``, ascending:

1. the store is filled up to N records (bench/population.py ``populate_clone``: copies of
   template records that went through the real path, the same keys as the real path and
   the default history bound; 80 % provisioned, 10 % that had a GateKeeper error and
   recovered, 10 % deprovisioned);
2. each beat sweep runs ``--sweep-repeat`` times from this process on a Service of
   ``worker.bootstrap.build_service`` (``recover``: claim_orphans on the pending set;
   ``sweep_stuck``: the Processing and Deprovisioning indexes; ``sweep_retries``: the due
   part of the retry schedule; ``sweep_calling_tests``: the InProgress index;
   ``expire_failed``: the failed-task store); reported: the Redis CPU and this process's
   CPU per sweep, and how many records each one read;
3. a fresh ``celery -A worker.app worker --concurrency C`` (bench/harness.py, on
   bench/throughput.py) gets a fixed workload of ``--events`` events through
   ``worker.api.submit_events``: 40 % ``provision.requested`` for new records, and on
   records already stored (each at most one event, never one an earlier size used)
   20 % re-provisions, 20 % ``gatekeeper.reported`` Inactive/Error, 20 %
   ``deprovision.requested``. Reported per event: the worker's CPU ms (main process and
   pool children, /proc), Redis CPU ms (``INFO cpu``), Redis commands; and events/s
   (wall, from the first submit to the last commit).

The workers run with PROVISIONING_RETRY_BASE_SECONDS=86400, so that the retries the
GateKeeper errors schedule do not come due during the run (they would add events). A size
whose records would not fit in the memory left (``--max-redis-gib``) or past
``--max-runtime`` is skipped, and the run says so.

Prints a table; writes bench/results/scaling-<date>.json and .csv, and the curve as
bench/results/scaling-<date>.png (needs matplotlib: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

# isort: split
import argparse
import contextlib
import csv
import json
import random
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import population
import redis
import throughput
from harness import cpu_count, harness, start_worker, worker_env
from population import Progress, life_of, record_id, used_memory

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PREFIX = "provisioning"
SWEEPS = ("recover", "sweep_stuck", "sweep_retries", "sweep_calling_tests", "expire_failed")
RUNNING_LIVES = ("provisioned", "flapped")


def meminfo(name: str) -> int:
    """A /proc/meminfo figure in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    return 0


# -- sweeps ---------------------------------------------------------------------------------


def measure_sweeps(url: str, client: redis.Redis, repeat: int) -> dict[str, Any]:
    """Each beat sweep ``repeat`` times: Redis CPU ms, this process's CPU ms, wall ms."""
    from statemachine import StatusReason
    from worker.emulators import Emulator
    from worker.keys import Keys

    keys = Keys(PREFIX)
    kicked: list[str] = []
    service = population.make_service(url, PREFIX, Emulator(), kick=kicked.append)
    reads = {
        "recover": sum(int(client.zcard(keys.pending(n))) for n in range(keys.shards)),
        "sweep_stuck": sum(int(client.scard(key))
                           for s in (StatusReason.PROCESSING, StatusReason.DEPROVISIONING)
                           for key in keys.index_sets(status=s)),
        "sweep_retries": sum(int(client.zcount(keys.retries(n), "-inf", time.time()))
                             for n in range(keys.shards)),
        "sweep_calling_tests": sum(int(client.scard(keys.calling_in_progress(n)))
                                   for n in range(keys.shards)),
        "expire_failed": sum(int(client.zcard(keys.failed(n))) for n in range(keys.shards)),
    }
    results: dict[str, Any] = {}
    try:
        for name in SWEEPS:
            sweep: Callable[[], Any] = getattr(service, name)
            sweep()  # warm: scripts loaded, connection open
            redis_before = redis_cpu(client)
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(repeat):
                sweep()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            redis_s = redis_cpu(client) - redis_before
            results[name] = {"redis_cpu_ms": round(redis_s * 1000 / repeat, 3),
                             "bench_cpu_ms": round(cpu * 1000 / repeat, 3),
                             "wall_ms": round(wall * 1000 / repeat, 3),
                             "records_read": reads[name]}
    finally:
        service.close()
        service.store.client.close()
    if kicked:
        print(f"  note: the sweeps kicked {len(kicked)} records", file=sys.stderr)
    return results


class _Crash(Exception):
    """A worker dying in the middle of a step's backend call."""


class _CrashingBackends:
    """Stands in for the emulator: every backend call dies (an in-process transport)."""

    def transport(self) -> Any:
        import httpx

        def die(request: httpx.Request) -> httpx.Response:
            raise _Crash(request.url.path)

        return httpx.MockTransport(die)


def in_flight(url: str, args: argparse.Namespace, size: int) -> list[str]:
    """``--in-flight`` records in each state a sweep reads, through the real path: a step
    that died with its worker (Processing, no lease, still pending: what ``recover`` and
    ``sweep_stuck`` read) and a calling test InProgress (``sweep_calling_tests``)."""
    from statemachine import parse_event
    from worker.emulators import Emulator

    rng = random.Random(f"{args.seed}:flight:{size}")
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(2 * args.in_flight)]
    crashed, testing = ids[:args.in_flight], ids[args.in_flight:]

    def provision(rid: str, k: int, phone: bool) -> dict[str, Any]:
        raw = population.life_events(args.seed, 0)[0][0]
        links = dict(raw["data"]["links"])
        if phone:
            links["msdyn_phonenumberid"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        return {**raw, "id": f"flight-{size}-{k}", "subject": rid,
                "data": {**raw["data"], "links": links}}

    dying = population.make_service(url, PREFIX, _CrashingBackends())
    try:
        dying.accept_all([parse_event(provision(rid, k, False))
                          for k, rid in enumerate(crashed)])
        for rid in crashed:
            # The drain hands its lease over; the record stays Processing and pending.
            with contextlib.suppress(_Crash):
                dying.drain(rid)
    finally:
        dying.close()
        dying.store.client.close()
    emulator = Emulator()
    service = population.make_service(url, PREFIX, emulator)
    try:
        population.apply_rounds(service, [
            [provision(rid, len(crashed) + k, True) for k, rid in enumerate(testing)]])
        service.accept_all([parse_event({
            "specversion": "1.0", "id": f"flight-{size}-test-{k}", "source": "bench-scaling",
            "type": "calling_test.requested", "subject": rid}) for k, rid in enumerate(testing)])
        population.drain(service, testing)
    finally:
        service.close()
        service.store.client.close()
        emulator.reset()
    return ids


def settle_in_flight(url: str, args: argparse.Namespace, size: int, ids: list[str]) -> None:
    """Finish what ``in_flight`` left: the died steps run again, the calling tests complete
    (every one of those records ends Running, with nothing pending)."""
    from statemachine import parse_event
    from worker.emulators import Emulator

    emulator = Emulator()
    service = population.make_service(url, PREFIX, emulator)
    crashed, testing = ids[:args.in_flight], ids[args.in_flight:]
    try:
        population.drain(service, crashed)
        events = []
        for k, rid in enumerate(testing):
            record = service.store.load(rid)
            events.append(parse_event({
                "specversion": "1.0", "id": f"flight-{size}-done-{k}", "source": "bench-scaling",
                "type": "calling_test.completed", "subject": rid,
                "data": {"result": "Success", "test_id": record.tracking.calling_test_id}}))
        service.accept_all(events)
        population.drain(service, testing)
    finally:
        service.close()
        service.store.client.close()
        emulator.reset()


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


# -- the workload -----------------------------------------------------------------------------


def workload(args: argparse.Namespace, size: int, populated: int,
             used: set[int]) -> tuple[list[dict[str, Any]], int]:
    """``--events`` events: 40 % new records, 60 % on stored Running records never used;
    and how many are new records."""
    rng = random.Random(f"{args.seed}:{size}")
    n = args.events
    counts = {"provision.requested": round(n * 0.2), "gatekeeper.reported": round(n * 0.2),
              "deprovision.requested": round(n * 0.2)}
    new = n - sum(counts.values())
    events: list[dict[str, Any]] = []
    for k in range(new):
        raw = population.life_events(args.seed, 0)[0][0]
        rid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        events.append({**raw, "id": f"scale-{size}-{k:06d}", "subject": rid,
                       "data": {**raw["data"], "channel": {
                           "kind": raw["data"]["channel"]["kind"],
                           "id": str(uuid.UUID(int=rng.getrandbits(128), version=4))}}})
    targets: list[int] = []
    while len(targets) < n - new:
        i = rng.randrange(populated)
        if i not in used and life_of(i) in RUNNING_LIVES:
            used.add(i)
            targets.append(i)
    k = new
    for kind, count in counts.items():
        for i in targets[:count]:
            raw = population.life_events(args.seed, i)[0][0]
            if kind == "provision.requested":
                event = {**raw, "id": f"scale-{size}-{k:06d}"}
            else:
                event = population.event(i, 0, kind, record_id(args.seed, i))
                event["id"] = f"scale-{size}-{k:06d}"
                if kind == "gatekeeper.reported":
                    event["data"] = {"status": "Inactive", "reason": "Error",
                                     "details": "bench: the gate's health check failed"}
            events.append(event)
            k += 1
        targets = targets[count:]
    rng.shuffle(events)
    return events, new


def run_workload(h: Any, args: argparse.Namespace, size: int,
                 events: list[dict[str, Any]], new: int) -> dict[str, Any]:
    """The events on a fresh worker; CPU per event of the worker and of Redis."""
    from statemachine import StatusReason
    from worker.keys import Keys
    from worker.settings import Settings

    ctx = h.ctx
    env = worker_env(ctx, PREFIX, retry_base_seconds="86400")
    keys = Keys(PREFIX)
    submit = throughput.Submitter(throughput.NORMAL, Settings.from_env(env), args.batch)
    started = start_worker(ctx, args.concurrency, f"n{size}", env)
    try:
        def status(code: StatusReason) -> int:
            return sum(int(ctx.client.scard(key)) for key in keys.index_sets(status=code))

        # Warm-up, not measured: 2 new records per pool process.
        rng = random.Random(f"{args.seed}:warm:{size}")
        warm = []
        for k in range(2 * args.concurrency):
            raw = population.life_events(args.seed, 0)[0][0]
            warm.append({**raw, "id": f"scale-{size}-warm-{k}",
                         "subject": str(uuid.UUID(int=rng.getrandbits(128), version=4))})
        running = status(StatusReason.RUNNING) + len(warm)
        deprovisioned, errors = status(StatusReason.DEPROVISIONED), status(StatusReason.ERROR)
        submit(warm)
        wait(ctx, started, keys, running, deprovisioned, errors, len(warm))
        mix = {t: sum(1 for e in events if e["type"] == t) for t in throughput.TERMINAL}
        running += new - mix["gatekeeper.reported"] - mix["deprovision.requested"]
        deprovisioned += mix["deprovision.requested"]
        errors += mix["gatekeeper.reported"]
        before = throughput.Resources.now(ctx, started)
        submitted = submit(events)
        settled = wait(ctx, started, keys, running, deprovisioned, errors, len(events),
                       strict=False)
        after = throughput.Resources.now(ctx, started)
        done, outcomes = throughput.commit_times(ctx, keys, events)
        ctx.queue_idle(started, 30)
    finally:
        ctx.procs.stop(started)
        submit.close()
    summary = throughput.summarize(submitted, done)
    return {"settled": settled, "new_records": new, "mix": mix,
            "cpu_per_event": before.per_item(after, len(events)),
            "per_s": summary["per_s"], "completed": summary["completed"],
            "p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"],
            "outcomes": dict(sorted(outcomes.items())), "log": str(started.log)}


def wait(ctx: Any, started: Any, keys: Any, running: int, deprovisioned: int, errors: int,
         events: int, *, strict: bool = True) -> bool:
    ok = throughput.wait_settled(ctx, started, keys, running=running,
                                 deprovisioned=deprovisioned, errors=errors,
                                 deadline=ctx.deadline(60 + events / 20))
    if not ok and strict:
        raise throughput.BenchError(f"the worker did not settle; see {started.log}")
    return ok and ctx.queue_idle(started, 30)


# -- the run -----------------------------------------------------------------------------------


def stored_records(client: redis.Redis) -> int:
    """Records in the store: the sizes of every status/kind index set (store v2)."""
    from worker.keys import Keys

    return sum(int(client.scard(key)) for key in Keys(PREFIX).index_sets())


def run(args: argparse.Namespace) -> int:
    from worker.emulators import Emulator, embedded
    from worker.logs import configure
    from worker.settings import Settings

    configure(Settings(log_level="WARNING", log_format="json"))
    stamp = datetime.now(UTC)
    began = time.monotonic()
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    document: dict[str, Any] = {
        "benchmark": "bench/scaling.py", "started_at": stamp.isoformat(),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "history_limit": Settings().history_limit, "source": throughput.source_state()}
    with embedded.start("redis-server") as server, \
            harness(server.url, f"bench-scaling-{stamp:%Y%m%d%H%M%S}") as h:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        document["machine"] = machine(client)
        info = document["machine"]
        print(f"machine: {info['nproc']} CPUs, {info['cpu_model']}, {info['memory_gib']} GiB; "
              f"Python {info['python']}, Celery {info['celery']}, redis-server "
              f"{info['redis_server']}; workers --concurrency {args.concurrency}", flush=True)
        templates = population.make_templates(server.url, PREFIX, Emulator(), args.seed)
        baseline = used_memory(client)["used_memory"]
        populated, used = 0, set()
        bytes_per_record = 8000.0  # a guess until the first size is measured
        for size in args.size_list:
            elapsed = time.monotonic() - began
            need = (size - populated) * bytes_per_record * 1.25
            room = min(args.max_redis_gib * 2**30 - (used_memory(client)["used_memory"]
                                                     - baseline),
                       meminfo("MemAvailable") - 2 * 2**30)
            if need > room:
                skipped.append(f"{size:,}: needs ~{need / 2**30:.1f} GiB more, "
                               f"{room / 2**30:.1f} GiB left")
                break
            if elapsed > args.max_runtime:
                skipped.append(f"{size:,}: --max-runtime ({args.max_runtime:.0f} s) passed")
                break
            print(f"\nN = {size:,}", flush=True)
            t0 = time.monotonic()
            population.populate_clone(client, PREFIX, templates, args.seed, populated, size,
                                      progress=Progress("populate", populated, size))
            populate_s = time.monotonic() - t0
            populated = size
            memory = used_memory(client)
            records = stored_records(client)
            bytes_per_record = (memory["used_memory"] - baseline) / records
            flying = in_flight(server.url, args, size)
            sweeps = measure_sweeps(server.url, client, args.sweep_repeat)
            settle_in_flight(server.url, args, size, flying)
            print("  sweeps (Redis CPU ms, records read): " + ", ".join(
                f"{name} {s['redis_cpu_ms']:.3f} ({s['records_read']})"
                for name, s in sweeps.items()), flush=True)
            events, new = workload(args, size, populated, used)
            result = run_workload(h, args, size, events, new)
            cpu = result["cpu_per_event"]
            print(f"  {len(events)} events: {result['per_s']}/s, worker "
                  f"{cpu['worker_cpu_ms']} ms, Redis {cpu['redis_cpu_ms']} ms CPU per event, "
                  f"others {cpu['others_cpu_pct']} %", flush=True)
            rows.append({"records": records, "populate_s": round(populate_s, 1),
                         "used_memory": memory["used_memory"],
                         "bytes_per_record": round(bytes_per_record, 1),
                         "events": len(events), **result, "sweeps": sweeps})
    document.update({"rows": rows, "skipped": skipped})
    print_table(rows)
    for line in skipped:
        print(f"skipped {line}")
    outputs = write(args, stamp, document, rows)
    print("\nresults: " + ", ".join(str(p) for p in outputs))
    return 0


def machine(client: redis.Redis) -> dict[str, Any]:
    info = throughput.machine(argparse.Namespace(client=client))  # type: ignore[arg-type]
    info["memory_gib"] = round(meminfo("MemTotal") / 2**30, 1)
    return info


def table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    flat = []
    for row in rows:
        cpu = row["cpu_per_event"]
        item = {"records": row["records"], "bytes_per_record": round(row["bytes_per_record"]),
                "events": row["events"], "completed": row["completed"],
                "events_per_s": row["per_s"], "worker_cpu_ms": cpu["worker_cpu_ms"],
                "redis_cpu_ms": cpu["redis_cpu_ms"],
                "total_cpu_ms": round(cpu["worker_cpu_ms"] + cpu["redis_cpu_ms"], 3),
                "redis_commands": cpu["redis_commands"], "others_pct": cpu["others_cpu_pct"]}
        for name, sweep in row["sweeps"].items():
            item[f"{name}_redis_ms"] = sweep["redis_cpu_ms"]
            item[f"{name}_cpu_ms"] = sweep["bench_cpu_ms"]
        flat.append(item)
    return flat


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'records':>10} {'B/rec':>6} {'events/s':>9} {'worker ms':>10} {'Redis ms':>9} "
          f"{'cmds':>6} {'others%':>8}   per event (CPU)")
    for r in table(rows):
        print(f"{r['records']:>10,} {r['bytes_per_record']:>6,} {r['events_per_s'] or 0:>9.1f} "
              f"{r['worker_cpu_ms']:>10.3f} {r['redis_cpu_ms']:>9.3f} "
              f"{r['redis_commands']:>6.1f} {r['others_pct']:>8.1f}")
    print(f"\n{'records':>10} " + " ".join(f"{name:>20}" for name in SWEEPS)
          + "   per sweep: Redis CPU ms / worker-side CPU ms (records read)")
    for row in rows:
        cells = [f"{s['redis_cpu_ms']:.3f}/{s['bench_cpu_ms']:.3f} ({s['records_read']})"
                 for s in (row["sweeps"][name] for name in SWEEPS)]
        print(f"{row['records']:>10,} " + " ".join(f"{c:>20}" for c in cells))


def write(args: argparse.Namespace, stamp: datetime, document: dict[str, Any],
          rows: list[dict[str, Any]]) -> list[Path]:
    base = args.output or RESULTS / f"scaling-{stamp:%Y-%m-%d}.json"
    base.parent.mkdir(parents=True, exist_ok=True)
    base.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    flat = table(rows)
    outputs = [base]
    if flat:
        csv_path = base.with_suffix(".csv")
        with csv_path.open("w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(flat[0]))
            writer.writeheader()
            writer.writerows(flat)
        outputs.append(csv_path)
        if not args.no_plot:
            png = plot(flat, base.with_suffix(".png"), document["machine"])
            if png is not None:
                outputs.append(png)
    return outputs


def plot(flat: list[dict[str, Any]], path: Path, info: dict[str, Any]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: matplotlib is not installed (pip install -e '.[bench]')",
              file=sys.stderr)
        return None
    x = [r["records"] for r in flat]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, label in (("worker_cpu_ms", "worker"), ("redis_cpu_ms", "Redis"),
                        ("total_cpu_ms", "worker + Redis")):
        left.plot(x, [r[name] for r in flat], marker="o", label=label)
    left.set(xscale="log", xlabel="records stored", ylabel="CPU ms per event",
             title="Cost per event")
    left.set_ylim(bottom=0)
    rate = left.twinx()
    rate.plot(x, [r["events_per_s"] or 0 for r in flat], "k--", marker="s", alpha=0.5,
              label="events/s (wall)")
    rate.set_ylabel("events/s (wall)")
    rate.set_ylim(bottom=0)
    lines = left.get_legend_handles_labels()
    more = rate.get_legend_handles_labels()
    left.legend(lines[0] + more[0], lines[1] + more[1], loc="lower left", fontsize=8)
    for name in SWEEPS:
        right.plot(x, [r[f"{name}_redis_ms"] + r[f"{name}_cpu_ms"] for r in flat], marker="o",
                   label=name)
    right.set(xscale="log", xlabel="records stored", ylabel="CPU ms per sweep (Redis + caller)",
              title="One beat sweep")
    right.set_ylim(bottom=0)
    right.legend(fontsize=8)
    fig.suptitle(f"bench/scaling.py: {info['nproc']} CPUs ({info['cpu_model']}), "
                 f"redis-server {info['redis_server']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/scaling.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,300000,1000000",
                        help="comma-separated numbers of stored records")
    parser.add_argument("--events", type=int, default=3000,
                        help="events of the measured workload at each size")
    parser.add_argument("--concurrency", type=int, default=cpu_count(),
                        help="prefork pool processes of the worker")
    parser.add_argument("--batch", type=int, default=50, help="events per submit_events call")
    parser.add_argument("--sweep-repeat", type=int, default=20,
                        help="runs of each sweep (the figures are per run)")
    parser.add_argument("--in-flight", type=int, default=100,
                        help="records in each state a sweep reads while it is measured")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-redis-gib", type=float, default=12.0,
                        help="stop before a size whose records would take more")
    parser.add_argument("--max-runtime", type=float, default=2700.0,
                        help="seconds; no new size starts after it")
    parser.add_argument("--output", type=Path,
                        help="JSON file (default bench/results/scaling-<date>.json; the "
                             ".csv and .png go next to it)")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    try:
        args.size_list = sorted({int(v) for v in args.sizes.split(",") if v.strip()})
    except ValueError:
        parser.error("--sizes: comma-separated integers")
    if not args.size_list or args.size_list[0] < 100 or args.events < 10:
        parser.error("--sizes: at least 100 records each; --events: at least 10")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return throughput.entry(parse_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
