"""An emulator of the three backends the worker calls: provisioner, GateKeeper, calling test.

It speaks the HTTP contract of SPEC §4 and keeps the state a real backend would, so the
demo, docker-compose and the tests exercise the worker against something that answers like
the real services, including their bad days. One :class:`Emulator` serves all three
backends; their paths do not collide, so all three base URLs may point at it:

    PUT    /v1/channels/{kind}/{channel id}   provision (201 created, 200 updated)
    DELETE /v1/channels/{kind}/{channel id}   deprovision (204; 404 when unknown)
    PUT    /v1/gates/{record id}              {"status": "Active"}: 200, activates
                                              {"status": "Inactive", "reason": "Deprovisioned"}:
                                              200, or 404 when never activated
    POST   /v1/calling-tests                  202 {"test_id": "<uuid4>"}
    GET    /healthz                           200 {"status": "ok"}

Dataverse too: requests whose path starts with ``/api/data/`` or ``/_dataverse/`` or
contains ``/oauth2/`` go to :attr:`Emulator.dataverse`, the Dataverse Web API and token
endpoint emulator of ``worker.emulators.dataverse`` (see its docstring).

and an admin API for scripting a running server (not recorded as traffic)::

    POST   /_emulator/script    {"target", "step", "answers": [...], "then": answer}
    DELETE /_emulator/script    clear every script (?target=ID: only that target's)
    POST   /_emulator/reset     forget state, scripts, idempotency keys and requests
    GET    /_emulator/requests  the recorded requests, oldest first
    GET    /_emulator/state     channels, gates and calling tests

Behaviour, in the order it is decided for each backend request:

1. a malformed request (unknown path, wrong method, body not the JSON SPEC §4 names) gets 400,
   404 or 405 (``backends_routes``);
2. a known ``Idempotency-Key`` replays the first successful answer given to it (422 if the
   key comes back with a different request, as in the IETF Idempotency-Key draft);
3. a scripted answer for (step, target) is consumed (``backends_scripts``), where target is
   the channel id or the record id of the request, or ``"*"`` for any; after the queue the
   ``then`` answer, if any, is given forever, else normal behaviour resumes; an answer with
   ``delay_ms`` is decided (and a success changes state) at once but sent only after that
   delay, as a backend that acted and then answered too late for its client;
4. with probability ``failure_rate`` (drawn from a seeded RNG) a 503;
5. normal behaviour.

Every backend request waits ``latency_ms`` first, and is recorded in :attr:`Emulator.requests`;
:attr:`Emulator.max_concurrency` is the most backend requests it answered at once.
Serve it over HTTP with ``worker.emulators.server`` (``python -m worker.emulators``).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

from statemachine import BackendStep
from worker.emulators.backends_routes import BadRequest, Route, loads_or_none, route_of
from worker.emulators.backends_scripts import (
    ANY_TARGET,
    Answer,
    AnswerLike,
    Script,
    script_from_json,
)
from worker.emulators.dataverse import DataverseEmulator
from worker.emulators.serving import Reply

__all__ = ["Emulator", "GateState", "RecordedRequest"]

_BACKEND_OF = {
    BackendStep.PROVISION_CHANNEL: "provisioner", BackendStep.DEPROVISION_CHANNEL: "provisioner",
    BackendStep.ACTIVATE_GATE: "gatekeeper", BackendStep.DEACTIVATE_GATE: "gatekeeper",
    BackendStep.START_CALLING_TEST: "calling_test",
}


@dataclass(frozen=True)
class RecordedRequest:
    """One backend request the emulator answered."""

    method: str
    path: str
    idempotency_key: str | None
    status: int
    step: BackendStep | None
    target: str | None  # the channel id, or the record id for gates and calling tests
    payload: object  # the parsed JSON body, None when there was none
    replayed: bool = False  # answered from the idempotency store
    delay_ms: float = 0.0  # a scripted delay before the answer was sent
    at: float = 0.0  # when it was answered (time.time())
    traceparent: str | None = None  # the W3C Trace Context headers it came with
    tracestate: str | None = None

    def as_json(self) -> dict[str, object]:
        return {"method": self.method, "path": self.path,
                "idempotency_key": self.idempotency_key, "status": self.status,
                "step": self.step.value if self.step else None, "target": self.target,
                "payload": self.payload, "replayed": self.replayed,
                "delay_ms": self.delay_ms, "at": self.at,
                "traceparent": self.traceparent, "tracestate": self.tracestate}


@dataclass(frozen=True)
class GateState:
    status: str
    reason: str


class Emulator:
    """The three backends in one object; see the module docstring for the behaviour.

    Thread-safe: the HTTP server calls :meth:`handle` from many threads.
    """

    def __init__(
        self,
        *,
        failure_rate: float = 0.0,
        latency_ms: float = 0.0,
        seed: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
        dataverse: DataverseEmulator | None = None,
    ) -> None:
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be between 0 and 1, not {failure_rate}")
        if latency_ms < 0:
            raise ValueError(f"latency_ms must not be negative, not {latency_ms}")
        self.failure_rate = failure_rate
        self.latency_ms = latency_ms
        self.seed = seed
        self._rng = random.Random(seed)
        self._sleep = sleep
        self._lock = threading.Lock()
        self._channels: dict[tuple[str, str], dict[str, Any]] = {}
        self._gates: dict[str, GateState] = {}
        self._calling_tests: dict[str, dict[str, str]] = {}
        self._scripts: dict[tuple[BackendStep, str], Script] = {}
        self._answered: dict[str, tuple[str, Reply]] = {}  # key -> (request fingerprint, reply)
        self._requests: list[RecordedRequest] = []
        self._in_flight = 0  # backend requests being answered now
        self.max_concurrency = 0  # the most answered at once since the last reset
        self._in_flight_by: Counter[str] = Counter()
        self.max_concurrency_by: dict[str, int] = {}  # the same, per backend
        self.dataverse = dataverse if dataverse is not None else DataverseEmulator()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Emulator:
        """An emulator configured by EMULATOR_FAILURE_RATE, _LATENCY_MS and _SEED (all
        optional); ValueError names the variable whose value is wrong."""
        values: dict[str, Any] = {}
        for name, option, parse in (("EMULATOR_FAILURE_RATE", "failure_rate", float),
                                    ("EMULATOR_LATENCY_MS", "latency_ms", float),
                                    ("EMULATOR_SEED", "seed", int)):
            raw = environ.get(name, "").strip()
            if raw:
                try:
                    values[option] = parse(raw)
                except ValueError as exc:
                    raise ValueError(f"{name}={raw!r} is not a number") from exc
        return cls(**values)

    # -- scripting ---------------------------------------------------------------------

    def script(
        self,
        target: str,
        step: BackendStep | str,
        answers: Iterable[AnswerLike],
        *,
        then: AnswerLike | None = None,
    ) -> None:
        """Queue ``answers`` for ``step`` on ``target`` (a channel id, a record id or "*").

        Each request for that step and target consumes one; after the queue, ``then`` is
        given to every request if set, else normal behaviour resumes. Replaces any earlier
        script of the same step and target.
        """
        key = (BackendStep(step), target)
        script = Script(deque(Answer.of(a) for a in answers),
                        Answer.of(then) if then is not None else None)
        with self._lock:
            self._scripts[key] = script

    def fail_permanently(
        self, target: str, step: BackendStep | str, status: int = 400, body: object = None
    ) -> None:
        """Answer ``status`` to every request for ``step`` on ``target`` until cleared."""
        self.script(target, step, [], then=Answer(status, body))

    def clear_scripts(self, target: str | None = None) -> None:
        """Forget the scripts of ``target``, or all of them."""
        with self._lock:
            if target is None:
                self._scripts.clear()
            else:
                for key in [k for k in self._scripts if k[1] == target]:
                    del self._scripts[key]

    def reset(self) -> None:
        """Forget state, scripts, idempotency keys and recorded requests."""
        with self._lock:
            self._channels.clear()
            self._gates.clear()
            self._calling_tests.clear()
            self._scripts.clear()
            self._answered.clear()
            self._requests.clear()
            self.max_concurrency = self._in_flight
            self.max_concurrency_by = {k: v for k, v in self._in_flight_by.items() if v}
        self.dataverse.reset()

    # -- what tests look at ------------------------------------------------------------

    @property
    def requests(self) -> tuple[RecordedRequest, ...]:
        """Every backend request answered so far, oldest first (a snapshot)."""
        with self._lock:
            return tuple(self._requests)

    @property
    def channels(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Provisioned channels by (kind, channel id) (a snapshot)."""
        with self._lock:
            return {key: dict(value) for key, value in self._channels.items()}

    @property
    def gates(self) -> dict[str, GateState]:
        """Gates by record id (a snapshot)."""
        with self._lock:
            return dict(self._gates)

    @property
    def calling_tests(self) -> dict[str, dict[str, str]]:
        """Calling tests started, by test id (a snapshot)."""
        with self._lock:
            return {key: dict(value) for key, value in self._calling_tests.items()}

    # -- serving -----------------------------------------------------------------------

    def transport(self) -> httpx.BaseTransport:
        """An in-process httpx transport: ``httpx.Client(transport=emu.transport())``.

        Any host answers, so the three base URLs may be anything (e.g. http://emulator.local).
        """
        return httpx.MockTransport(self._handle_httpx)

    def _handle_httpx(self, request: httpx.Request) -> httpx.Response:
        reply = self.handle(request.method, request.url.raw_path.decode("ascii"),
                            request.content,
                            idempotency_key=request.headers.get("Idempotency-Key"),
                            headers=request.headers)
        return httpx.Response(reply.status, headers=list(reply.headers), content=reply.content)

    def handle(
        self, method: str, raw_path: str, body: bytes, *, idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Answer one HTTP request; ``raw_path`` is the request target (path and query).
        Waits (``sleep``) in the calling thread."""
        steps = self._handling(method, raw_path, body, idempotency_key, headers)
        try:
            while True:
                self._sleep(next(steps))
        except StopIteration as done:
            reply: Reply = done.value
            return reply

    async def handle_async(
        self, method: str, raw_path: str, body: bytes, *, idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """:meth:`handle` on an event loop: the waits are ``asyncio.sleep``, so thousands
        of requests wait at once without a thread each."""
        steps = self._handling(method, raw_path, body, idempotency_key, headers)
        try:
            while True:
                await asyncio.sleep(next(steps))
        except StopIteration as done:
            reply: Reply = done.value
            return reply

    def _handling(
        self, method: str, raw_path: str, body: bytes, idempotency_key: str | None,
        headers: Mapping[str, str] | None,
    ) -> Generator[float, None, Reply]:
        """The answer to one request; yields each wait (seconds) before it goes on."""
        url = urlsplit(raw_path)
        if DataverseEmulator.owns(url.path):
            return self.dataverse.handle(method, raw_path, body, headers or {})
        segments = tuple(unquote(s) for s in url.path.strip("/").split("/"))
        if segments == ("healthz",):
            return Reply.of(200, {"status": "ok"})
        if segments[0] == "_emulator":
            return self._admin(method, segments[1:], parse_qs(url.query), body)
        try:
            request = route_of(method, segments, body)
        except BadRequest as exc:
            self._record(RecordedRequest(method, url.path, idempotency_key, exc.reply.status,
                                         None, None, loads_or_none(body)))
            return exc.reply
        backend = _BACKEND_OF[request.step]
        with self._lock:
            self._in_flight += 1
            self.max_concurrency = max(self.max_concurrency, self._in_flight)
            self._in_flight_by[backend] += 1
            self.max_concurrency_by[backend] = max(self.max_concurrency_by.get(backend, 0),
                                                   self._in_flight_by[backend])
        try:
            if self.latency_ms:
                yield self.latency_ms / 1000
            with self._lock:
                reply, delay_ms = self._answer(method, url.path, request, idempotency_key,
                                               _trace_headers(headers or {}))
            if delay_ms:  # decided (and acted on) already; only the answer is late
                yield delay_ms / 1000
        finally:
            with self._lock:
                self._in_flight -= 1
                self._in_flight_by[backend] -= 1
        return reply

    def _answer(self, method: str, path: str, route: Route, key: str | None,
                trace: tuple[str | None, str | None] = (None, None)) -> tuple[Reply, float]:
        """Steps 2-5 of the module docstring, and the delay before the answer is sent;
        the caller holds the lock."""
        fingerprint = json.dumps([method, path, route.payload], sort_keys=True)
        replayed = False
        delay_ms = 0.0
        if key is not None and key in self._answered:
            first_fingerprint, reply = self._answered[key]
            replayed = True
            if first_fingerprint != fingerprint:
                reply = Reply.of(422, {"error": "Idempotency-Key reused for another request"})
        else:
            scripted = self._scripted(route)
            if scripted is not None:
                reply, delay_ms = scripted
            else:
                reply = self._random_failure() or self._normal(route)
            if key is not None and 200 <= reply.status < 300:
                self._answered[key] = (fingerprint, reply)
        self._requests.append(RecordedRequest(method, path, key, reply.status, route.step,
                                              route.targets[0], route.payload, replayed,
                                              delay_ms, time.time(), *trace))
        return reply, delay_ms

    def _script_targets(self, route: Route) -> tuple[str, ...]:
        """What a script for this request may be keyed by, most specific first."""
        if route.step is BackendStep.DEPROVISION_CHANNEL:
            # The DELETE names no record; the channel's provisioning did.
            channel = self._channels.get((route.kind, route.channel_id))
            if channel is not None:
                return (*route.targets, channel["record_id"], ANY_TARGET)
        return (*route.targets, ANY_TARGET)

    def _scripted(self, route: Route) -> tuple[Reply, float] | None:
        """The next scripted answer for this request and its delay, or None."""
        for target in self._script_targets(route):
            script = self._scripts.get((route.step, target))
            answer = script.next() if script is not None else None
            if answer is None:
                continue
            if answer.behaves_normally:
                # "Succeed now": the normal answer, so that the state stays consistent
                # with what the client is told (a DELETE of an unknown channel stays a 404).
                normal = self._normal(route)
                return Reply(normal.status, normal.content,
                             (*normal.headers, *answer.headers.items())), answer.delay_ms
            body = answer.body if answer.body is not None else {
                "error": f"scripted {answer.status}"}
            return Reply.of(answer.status, body, answer.headers.items()), answer.delay_ms
        return None

    def _random_failure(self) -> Reply | None:
        if self.failure_rate and self._rng.random() < self.failure_rate:
            return Reply.of(503, {"error": "emulated transient failure"})
        return None

    def _normal(self, route: Route) -> Reply:
        """What a healthy backend answers, changing its state."""
        if route.step is BackendStep.PROVISION_CHANNEL:
            assert route.payload is not None
            channel_key = (route.kind, route.channel_id)
            previous = self._channels.get(channel_key)
            revision = previous["revision"] + 1 if previous else 1
            self._channels[channel_key] = {**route.payload, "revision": revision}
            text = (f"Provisioned {route.kind} channel {route.channel_id} for record "
                    f"{route.record_id} (revision {revision})")
            return Reply.of(200 if previous else 201, {"response": text})
        if route.step is BackendStep.DEPROVISION_CHANNEL:
            if self._channels.pop((route.kind, route.channel_id), None) is None:
                return Reply.of(404, {"error": "channel not found"})
            return Reply.of(204, None)
        if route.step is BackendStep.ACTIVATE_GATE:
            self._gates[route.record_id] = GateState("Active", "Running")
            return Reply.of(200, {"status": "Active", "reason": "Running"})
        if route.step is BackendStep.DEACTIVATE_GATE:
            if route.record_id not in self._gates:
                return Reply.of(404, {"error": "gate not found"})
            self._gates[route.record_id] = GateState("Inactive", "Deprovisioned")
            return Reply.of(200, {"status": "Inactive", "reason": "Deprovisioned"})
        assert route.payload is not None
        test_id = str(uuid.uuid4())
        self._calling_tests[test_id] = {"record_id": route.record_id,
                                        "phone_number_id": route.payload["phone_number_id"]}
        return Reply.of(202, {"test_id": test_id})

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    # -- admin API ---------------------------------------------------------------------

    def _admin(
        self, method: str, segments: tuple[str, ...], query: Mapping[str, list[str]], body: bytes
    ) -> Reply:
        match (method, segments):
            case ("POST", ("script",)):
                try:
                    request = script_from_json(loads_or_none(body))
                except ValueError as exc:
                    return Reply.of(400, {"error": str(exc)})
                self.script(request.target, request.step, request.answers, then=request.then)
                return Reply.of(200, {"ok": True})
            case ("DELETE", ("script",)):
                targets = query.get("target")
                self.clear_scripts(targets[0] if targets else None)
                return Reply.of(200, {"ok": True})
            case ("POST", ("reset",)):
                self.reset()
                return Reply.of(200, {"ok": True})
            case ("GET", ("requests",)):
                return Reply.of(200, [r.as_json() for r in self.requests])
            case ("GET", ("state",)):
                return Reply.of(200, {
                    "channels": [{"kind": k, "channel_id": c, **v}
                                 for (k, c), v in self.channels.items()],
                    "gates": {r: {"status": g.status, "reason": g.reason}
                              for r, g in self.gates.items()},
                    "calling_tests": self.calling_tests,
                    "max_concurrency": self.max_concurrency,
                    "max_concurrency_by_backend": dict(self.max_concurrency_by),
                })
        return Reply.of(404, {"error": f"no admin endpoint {method} /_emulator/"
                                         f"{'/'.join(segments)}"})


def _trace_headers(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """A request's ``traceparent`` and ``tracestate`` headers (httpx's headers look names
    up in any case; the server's keep the case sent, lowercase as the worker sends them)."""
    if isinstance(headers, httpx.Headers):
        return headers.get("traceparent"), headers.get("tracestate")
    return (headers.get("traceparent") or headers.get("Traceparent"),
            headers.get("tracestate") or headers.get("Tracestate"))
