"""How fast is ``statemachine.apply``, and what does running the tables through
``transitions`` cost compared with a plain dict?

    .venv/bin/python bench/apply.py [--events 100000] [--records 1000] [--seed 7]
                                    [--repeat 3] [--profile]

A simulated worker first plays a realistic mix over ``--records`` records (provision
requests, step results that succeed or fail, retries, deprovisions, GateKeeper reports,
calling tests, parent deletes, re-deliveries, events that get rejected) and records every
``(record before, command, now, duplicate)`` it applies. The timed run then replays
exactly those inputs through ``apply``: generation and event parsing are not timed.
Times are the process's CPU time (``time.process_time``), so other load on the machine
does not count against us; each figure is the best of ``--repeat`` runs.

The same run records every ``(machine, state, trigger)`` lookup ``apply`` made and times
that sequence twice: through ``StateMachine.fire`` (a shared ``transitions.Machine``) and
through a dict built from the same tables.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from statemachine import (
    AutomatedCallingStatus,
    CallingTestTimedOut,
    Command,
    Event,
    ProvisioningState,
    Result,
    RetryDue,
    RunStep,
    StatusReason,
    StepResult,
    UnknownRecord,
    apply,
    dedupe_key,
    parse_event,
)
from statemachine.machines import MACHINES, StateMachine

START = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


@dataclass(slots=True)
class Call:
    """One recorded input of ``apply``."""

    record: ProvisioningState | None
    command: Command
    now: datetime
    duplicate: bool


@dataclass(slots=True)
class Simulated:
    """What the simulated worker knows about one record."""

    record_id: str
    kind: str
    channel_id: str
    phone_id: str | None
    record: ProvisioningState | None = None
    step: RunStep | None = None
    last: Command | None = None
    processed: set[str] | None = None


class Workload:
    """Plays a worker over many records and records every input it gives ``apply``."""

    def __init__(self, records: int, seed: int) -> None:
        self.random = random.Random(seed)
        self.clock = START
        self.sequence = 0
        self.calls: list[Call] = []
        self.raw_events: list[dict[str, Any]] = []
        self.records = [self._new_record() for _ in range(records)]

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.random.getrandbits(128), version=4))

    def _new_record(self) -> Simulated:
        kind = self.random.choice(["whatsapp", "voice", "voice", "teams", "facebook", "line",
                                   "phonenumber"])
        phone = self._uuid() if kind in ("voice", "phonenumber") else None
        return Simulated(self._uuid(), kind, phone if kind == "phonenumber" else self._uuid(),
                         phone, processed=set())

    def event(self, sim: Simulated, event_type: str, data: Any = None,
              subject: bool = True) -> Event:
        self.sequence += 1
        raw: dict[str, Any] = {"specversion": "1.0", "id": f"evt-{self.sequence}",
                               "source": "bench", "type": event_type}
        if subject:
            raw["subject"] = sim.record_id
        if data is not None:
            raw["data"] = data
        self.raw_events.append(raw)
        return parse_event(raw)

    def provision(self, sim: Simulated) -> Event:
        links: dict[str, str] = {}
        if sim.kind == "voice" and sim.phone_id:
            links["msdyn_phonenumberid"] = sim.phone_id
        if sim.kind in ("whatsapp", "voice"):
            links["msdyn_communicationprovidersettingid"] = self._uuid()
        return self.event(sim, "provision.requested", {
            "name": f"{sim.kind} {sim.record_id[:8]}",
            "channel": {"kind": sim.kind, "id": sim.channel_id}, "links": links})

    def step_result(self, sim: Simulated, ok: bool) -> StepResult:
        step = sim.step
        assert step is not None
        failed = None if ok else self.random.choice(step.kind.calls)
        return StepResult(
            record_id=step.record_id, event_id=step.event_id, kind=step.kind,
            started_version=step.started_version, ok=ok, failed_call=failed,
            details="" if ok else f"{failed} answered 503: upstream unavailable",
            summary=None if ok else f"{failed} failed",
            response='{"status": "ok"}' if ok else None,
            test_id=f"call-{self.sequence}" if ok else None,
        )

    def next_command(self, sim: Simulated) -> Command:
        """A plausible next command for ``sim`` in its current state."""
        pick = self.random.random()
        record = sim.record
        if record is None:
            return self.provision(sim)
        if sim.last is not None and pick < 0.03:
            return sim.last  # a re-delivery
        status = record.status
        if sim.step is not None and record.tracking.step is not None and pick < 0.75:
            return self.step_result(sim, ok=self.random.random() < 0.85)
        if status is StatusReason.PROCESSING:
            return self.provision(sim)  # ignored: already Processing
        if status is StatusReason.ERROR:
            if pick < 0.7:
                return RetryDue(record.id, record.version)
            if pick < 0.8:
                return self.provision(sim)
            if pick < 0.9:
                return self.event(sim, "gatekeeper.reported",
                                  {"status": "Active", "reason": "Running"})
            return self.event(sim, "deprovision.requested")
        if status is StatusReason.RUNNING:
            if record.calling_status is AutomatedCallingStatus.IN_PROGRESS:
                if pick < 0.6:
                    return self.event(sim, "calling_test.completed", {
                        "result": self.random.choice(["Success", "Success", "Failure"]),
                        "test_id": record.tracking.calling_test_id or "call"})
                if pick < 0.65:
                    started = record.tracking.calling_test_version or record.version
                    return CallingTestTimedOut(record.id, started)
            if pick < 0.30 and sim.phone_id:
                return self.event(sim, "calling_test.requested")
            if pick < 0.40:
                return self.event(sim, "gatekeeper.reported",
                                  {"status": "Inactive", "reason": "Error", "details": "cert"})
            if pick < 0.55:
                return self.provision(sim)  # re-provision (a renamed channel, new links)
            if pick < 0.60:
                return self.event(sim, "deprovision.requested")
            if pick < 0.64:
                table = "msdyn_occommunicationprovidersetting"
                parent = record.links.get("msdyn_communicationprovidersettingid")
                return self.event(sim, "parent.deleted",
                                  {"table": table, "id": parent or self._uuid()}, subject=False)
            if pick < 0.70:
                return self.event(sim, "calling_test.requested")  # rejected without a phone
            # The GateKeeper confirming a healthy gate: ignored, changes nothing.
            return self.event(sim, "gatekeeper.reported",
                              {"status": "Active", "reason": "Running"})
        if status is StatusReason.DEPROVISIONING:
            if pick < 0.8:
                return RetryDue(record.id, record.version)
            return self.event(sim, "gatekeeper.reported",
                              {"status": "Inactive", "reason": "Deprovisioned"})
        # Deprovisioned: late events are rejected; a parent delete may remove the row.
        if pick < 0.5:
            return self.provision(sim)
        if pick < 0.6 and sim.kind in ("whatsapp", "voice"):
            table = ("msdyn_ocwhatsappchannelaccount" if sim.kind == "whatsapp"
                     else "msdyn_ocvoicechannelsetting")
            return self.event(sim, "parent.deleted", {"table": table, "id": sim.channel_id},
                              subject=False)
        return self.event(sim, "gatekeeper.reported", {"status": "Active", "reason": "Running"})

    def play(self, count: int) -> Counter[str]:
        """Generate and apply ``count`` commands, recording each call; returns the results."""
        results: Counter[str] = Counter()
        while len(self.calls) < count:
            index = self.random.randrange(len(self.records))
            sim = self.records[index]
            if (sim.record is not None and sim.record.status is StatusReason.DEPROVISIONED
                    and self.random.random() < 0.8):
                # Onboarding moves on: a deprovisioned channel is mostly left alone.
                sim = self.records[index] = self._new_record()
            command = self.next_command(sim)
            assert sim.processed is not None
            key = dedupe_key(command)
            duplicate = key in sim.processed
            self.clock += timedelta(milliseconds=50)
            try:
                outcome = apply(sim.record, command, now=self.clock, duplicate=duplicate)
            except UnknownRecord:
                results["unknown record"] += 1
                continue
            self.calls.append(Call(sim.record, command, self.clock, duplicate))
            sim.processed.add(key)
            sim.last = command
            results[outcome.result.value] += 1
            if outcome.deleted:
                results["deleted"] += 1
                self.records[self.records.index(sim)] = self._new_record()
                continue
            sim.record = outcome.record
            steps = [effect for effect in outcome.effects if isinstance(effect, RunStep)]
            if steps:
                sim.step = steps[-1]
            if outcome.record is not None and outcome.record.tracking.step is None:
                sim.step = None
        return results


def record_lookups(calls: list[Call]) -> list[tuple[StateMachine, Any, Any]]:
    """Every (machine, state, trigger) that ``apply`` fires while replaying ``calls``."""
    lookups: list[tuple[StateMachine, Any, Any]] = []
    original = StateMachine.fire

    def recording(self: StateMachine, state: Any, trigger: Any) -> Any:
        lookups.append((self, state, trigger))
        return original(self, state, trigger)

    StateMachine.fire = recording  # type: ignore[method-assign]
    try:
        for call in calls:
            apply(call.record, call.command, now=call.now, duplicate=call.duplicate)
    finally:
        StateMachine.fire = original  # type: ignore[method-assign]
    return lookups


def time_apply(calls: list[Call]) -> float:
    gc.collect()
    started = time.process_time()
    for call in calls:
        apply(call.record, call.command, now=call.now, duplicate=call.duplicate)
    return time.process_time() - started


def time_fire(lookups: list[tuple[StateMachine, Any, Any]]) -> float:
    gc.collect()
    started = time.process_time()
    for machine, state, trigger in lookups:
        machine.fire(state, trigger)
    return time.process_time() - started


def time_dict(lookups: list[tuple[StateMachine, Any, Any]]) -> float:
    table = {
        (machine.name, source, trigger): dest
        for machine in MACHINES for trigger, sources, dest in machine.table for source in sources
    }
    keyed = [(machine.name, state, trigger) for machine, state, trigger in lookups]
    gc.collect()
    started = time.process_time()
    get = table.get
    for key in keyed:
        get(key)
    return time.process_time() - started


def time_parse(raw_events: list[dict[str, Any]]) -> float:
    gc.collect()
    started = time.process_time()
    for raw in raw_events:
        parse_event(raw)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--records", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs; the best is kept")
    parser.add_argument("--profile", action="store_true", help="cProfile one replay")
    args = parser.parse_args()

    workload = Workload(args.records, args.seed)
    results = workload.play(args.events)
    calls = workload.calls
    applied = sum(1 for call in calls if not call.duplicate)
    print(f"workload: {len(calls):,} commands over {args.records:,} records "
          f"(seed {args.seed}); outcomes: "
          + ", ".join(f"{name} {count:,}" for name, count in results.most_common()))
    kinds = Counter(type(call.command).__name__ if not isinstance(call.command, Event)
                    else call.command.type.value for call in calls)
    print("mix: " + ", ".join(f"{name} {count:,}" for name, count in kinds.most_common()))
    print("final statuses: " + ", ".join(
        f"{status.label} {count:,}" for status, count in Counter(
            sim.record.status for sim in workload.records if sim.record).most_common()))
    assert applied and results[Result.APPLIED.value]

    apply_seconds = min(time_apply(calls) for _ in range(args.repeat))
    lookups = record_lookups(calls)
    fire_seconds = min(time_fire(lookups) for _ in range(args.repeat))
    dict_seconds = min(time_dict(lookups) for _ in range(args.repeat))
    parse_seconds = min(time_parse(workload.raw_events) for _ in range(args.repeat))

    rate = len(calls) / apply_seconds
    print()
    print(f"apply():                {rate:12,.0f} events/s  "
          f"({apply_seconds * 1e6 / len(calls):6.1f} µs/event, {len(calls):,} events)")
    print(f"  target 15,000/s:      {'met' if rate >= 15_000 else 'NOT met'}")
    print(f"machine lookups:        {len(lookups):,} ({len(lookups) / len(calls):.2f} per event)")
    print(f"  via transitions fire: {len(lookups) / fire_seconds:12,.0f} lookups/s  "
          f"({fire_seconds * 1e6 / len(lookups):6.2f} µs each, "
          f"{fire_seconds / apply_seconds:5.1%} of apply time)")
    print(f"  via a plain dict:     {len(lookups) / dict_seconds:12,.0f} lookups/s  "
          f"({dict_seconds * 1e6 / len(lookups):6.3f} µs each)")
    print(f"  ratio fire / dict:    {fire_seconds / dict_seconds:12,.0f}x")
    print(f"  apply() if fire cost a dict lookup: "
          f"{len(calls) / (apply_seconds - fire_seconds + dict_seconds):,.0f} events/s")
    print(f"parse_event (not part of apply): "
          f"{len(workload.raw_events) / parse_seconds:,.0f} events/s")

    if args.profile:  # after the timed runs, which it would slow down
        profiler = cProfile.Profile()
        profiler.enable()
        time_apply(calls)
        profiler.disable()
        print()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
