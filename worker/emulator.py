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
endpoint emulator of ``worker.dataverse.emulator`` (see its docstring).

and an admin API for scripting a running server (not recorded as traffic)::

    POST   /_emulator/script    {"target", "step", "answers": [...], "then": answer}
    DELETE /_emulator/script    clear every script (?target=ID: only that target's)
    POST   /_emulator/reset     forget state, scripts, idempotency keys and requests
    GET    /_emulator/requests  the recorded requests, oldest first
    GET    /_emulator/state     channels, gates and calling tests

Behaviour, in the order it is decided for each backend request:

1. a malformed request (unknown path, wrong method, body not the JSON SPEC §4 names) gets 400,
   404 or 405;
2. a known ``Idempotency-Key`` replays the first successful answer given to it (422 if the
   key comes back with a different request, as in the IETF Idempotency-Key draft);
3. a scripted answer for (step, target) is consumed, where target is the channel id or the
   record id of the request, or ``"*"`` for any; after the queue the ``then`` answer, if
   any, is given forever, else normal behaviour resumes; an answer with ``delay_ms``
   is decided (and a success changes state) at once but sent only after that delay, as
   a backend that acted and then answered too late for its client;
4. with probability ``failure_rate`` (drawn from a seeded RNG) a 503;
5. normal behaviour.

Every backend request waits ``latency_ms`` first, and is recorded in :attr:`Emulator.requests`.
Run it as a server with ``python -m worker.emulator --host 127.0.0.1 --port 8080``; the
environment variables EMULATOR_FAILURE_RATE, EMULATOR_LATENCY_MS and EMULATOR_SEED give the
defaults of the matching options.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import structlog

from statemachine.effects import BackendStep
from statemachine.table import ChannelKind
from worker.dataverse.emulator import DataverseEmulator

__all__ = [
    "ANY_TARGET",
    "Answer",
    "Emulator",
    "EmulatorServer",
    "GateState",
    "RecordedRequest",
    "Reply",
    "main",
    "serve",
]

log = structlog.get_logger(__name__)

DEFAULT_HOST = "127.0.0.1"  # loopback unless told otherwise: the emulator has no auth
DEFAULT_PORT = 8080
ANY_TARGET = "*"


@dataclass(frozen=True)
class Answer:
    """One scripted answer.

    ``body`` is a JSON value, or a ``str`` sent as is (to emulate a non-JSON body), or None
    for the default. A 2xx answer without a body means "behave normally" (the normal status
    and body, so ``[503, 503, 200]`` is two failures, then success); any other answer is
    sent as given and changes no state. ``delay_ms`` holds the answer back that long
    (after deciding it), to provoke a client's read timeout.
    """

    status: int
    body: object = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.delay_ms < 0:
            raise ValueError(f"delay_ms must not be negative, not {self.delay_ms}")

    @classmethod
    def of(cls, value: AnswerLike) -> Answer:
        """An Answer from a status, a ``(status, body)`` pair or an Answer."""
        if isinstance(value, Answer):
            return value
        if isinstance(value, int):
            return cls(value)
        status, body = value
        return cls(status, body)

    @classmethod
    def from_json(cls, value: object) -> Answer:
        """An Answer from the admin API's JSON: a status, ``[status, body]`` or an object
        ``{"status", "body", "headers", "delay_ms"}``. Raises ValueError when it is none of
        them."""
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(_status(value))
        if isinstance(value, list) and len(value) == 2 and isinstance(value[0], int):
            return cls(_status(value[0]), value[1])
        if isinstance(value, dict) and isinstance(value.get("status"), int):
            headers = value.get("headers") or {}
            if not isinstance(headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
            ):
                raise ValueError("answer headers must be an object of strings")
            delay = value.get("delay_ms", 0)
            if isinstance(delay, bool) or not isinstance(delay, int | float):
                raise ValueError("answer delay_ms must be a number")
            return cls(_status(value["status"]), value.get("body"), headers, float(delay))
        raise ValueError(f"not an answer: {value!r}")


AnswerLike = int | tuple[int, object] | Answer


def _status(value: int) -> int:
    if not 200 <= value <= 599:
        raise ValueError(f"status {value} is not between 200 and 599")
    return value


@dataclass(frozen=True)
class Reply:
    """An HTTP answer, independent of the server or transport that sends it."""

    status: int
    content: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, status: int, body: object, headers: Mapping[str, str] | None = None) -> Reply:
        extra = tuple((headers or {}).items())
        if status == 204:  # RFC 9110: a 204 has no content
            return cls(status, b"", extra)
        if isinstance(body, str):
            return cls(status, body.encode(), (("Content-Type", "text/plain"), *extra))
        return cls(status, json.dumps(body).encode(), (("Content-Type", "application/json"),
                                                       *extra))


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

    def as_json(self) -> dict[str, object]:
        return {"method": self.method, "path": self.path,
                "idempotency_key": self.idempotency_key, "status": self.status,
                "step": self.step.value if self.step else None, "target": self.target,
                "payload": self.payload, "replayed": self.replayed,
                "delay_ms": self.delay_ms}


@dataclass(frozen=True)
class GateState:
    status: str
    reason: str


@dataclass(frozen=True)
class _Route:
    """A backend request, understood: which step, on what, with what body."""

    step: BackendStep
    targets: tuple[str, ...]  # what a script may be keyed by, most specific first
    payload: dict[str, Any] | None
    kind: str = ""
    channel_id: str = ""
    record_id: str = ""


class _BadRequest(Exception):
    """Ends the handling of a malformed request with the Reply it gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.reply = Reply.of(status, {"error": message})


@dataclass
class _Script:
    queue: deque[Answer] = field(default_factory=deque)
    then: Answer | None = None


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
        self._scripts: dict[tuple[BackendStep, str], _Script] = {}
        self._answered: dict[str, tuple[str, Reply]] = {}  # key -> (request fingerprint, reply)
        self._requests: list[RecordedRequest] = []
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
        script = _Script(deque(Answer.of(a) for a in answers),
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
        """Answer one HTTP request; ``raw_path`` is the request target (path and query)."""
        url = urlsplit(raw_path)
        if DataverseEmulator.owns(url.path):
            answer = self.dataverse.handle(method, raw_path, body, headers or {})
            return Reply(answer.status, answer.content, answer.headers)
        segments = tuple(unquote(s) for s in url.path.strip("/").split("/"))
        if segments == ("healthz",):
            return Reply.of(200, {"status": "ok"})
        if segments[0] == "_emulator":
            return self._admin(method, segments[1:], parse_qs(url.query), body)
        try:
            route = _route(method, segments, body)
        except _BadRequest as exc:
            self._record(RecordedRequest(method, url.path, idempotency_key, exc.reply.status,
                                         None, None, _loads_or_none(body)))
            return exc.reply
        if self.latency_ms:
            self._sleep(self.latency_ms / 1000)
        with self._lock:
            reply, delay_ms = self._answer(method, url.path, route, idempotency_key)
        if delay_ms:  # decided (and acted on) already; only the answer is late
            self._sleep(delay_ms / 1000)
        return reply

    def _answer(self, method: str, path: str, route: _Route, key: str | None,
                ) -> tuple[Reply, float]:
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
                                              delay_ms))
        return reply, delay_ms

    def _script_targets(self, route: _Route) -> tuple[str, ...]:
        """What a script for this request may be keyed by, most specific first."""
        if route.step is BackendStep.DEPROVISION_CHANNEL:
            # The DELETE names no record; the channel's provisioning did.
            channel = self._channels.get((route.kind, route.channel_id))
            if channel is not None:
                return (*route.targets, channel["record_id"], ANY_TARGET)
        return (*route.targets, ANY_TARGET)

    def _scripted(self, route: _Route) -> tuple[Reply, float] | None:
        """The next scripted answer for this request and its delay, or None."""
        for target in self._script_targets(route):
            script = self._scripts.get((route.step, target))
            if script is None:
                continue
            if script.queue:
                answer = script.queue.popleft()
            elif script.then is not None:
                answer = script.then
            else:
                continue
            if 200 <= answer.status < 300 and answer.body is None:
                # "Succeed now": the normal answer, so that the state stays consistent
                # with what the client is told (a DELETE of an unknown channel stays a 404).
                normal = self._normal(route)
                return Reply(normal.status, normal.content,
                             (*normal.headers, *answer.headers.items())), answer.delay_ms
            body = answer.body if answer.body is not None else {
                "error": f"scripted {answer.status}"}
            return Reply.of(answer.status, body, answer.headers), answer.delay_ms
        return None

    def _random_failure(self) -> Reply | None:
        if self.failure_rate and self._rng.random() < self.failure_rate:
            return Reply.of(503, {"error": "emulated transient failure"})
        return None

    def _normal(self, route: _Route) -> Reply:
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
                    self._script_from_json(_loads_or_none(body))
                except ValueError as exc:
                    return Reply.of(400, {"error": str(exc)})
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
                })
        return Reply.of(404, {"error": f"no admin endpoint {method} /_emulator/"
                                         f"{'/'.join(segments)}"})

    def _script_from_json(self, body: object) -> None:
        """Apply ``{"target", "step", "answers", "then"}``; ValueError when malformed."""
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        target, step, answers = body.get("target"), body.get("step"), body.get("answers", [])
        if not isinstance(target, str) or not target:
            raise ValueError('"target" must be a non-empty string')
        if step not in {s.value for s in BackendStep}:
            raise ValueError(f'"step" must be one of {", ".join(s.value for s in BackendStep)}')
        if not isinstance(answers, list):
            raise ValueError('"answers" must be a list')
        then = body.get("then")
        self.script(target, str(step), [Answer.from_json(a) for a in answers],
                    then=Answer.from_json(then) if then is not None else None)


def _loads_or_none(body: bytes) -> object:
    try:
        return json.loads(body) if body else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _BadRequest(400, f"body is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise _BadRequest(400, "body must be a JSON object")
    return payload


def _require_str(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise _BadRequest(400, f'"{name}" must be a non-empty string')
    return value


def _route(method: str, segments: Sequence[str], body: bytes) -> _Route:
    """Which backend step a request is, checking its body as the real backend would."""
    match segments:
        case ("v1", "channels", kind, channel_id):
            if kind not in {k.value for k in ChannelKind}:
                raise _BadRequest(400, f"unknown channel kind {kind!r}")
            if method == "DELETE":
                return _Route(BackendStep.DEPROVISION_CHANNEL, (channel_id,), None,
                              kind=kind, channel_id=channel_id)
            if method != "PUT":
                raise _BadRequest(405, f"{method} not allowed")
            payload = _json_object(body)
            record_id = _require_str(payload, "record_id")
            name, links = payload.get("name"), payload.get("links", {})
            if not isinstance(name, str):
                raise _BadRequest(400, '"name" must be a string')
            if not isinstance(links, dict) or not all(
                v is None or isinstance(v, str) for v in links.values()
            ):
                raise _BadRequest(400, '"links" must map columns to ids or null')
            return _Route(BackendStep.PROVISION_CHANNEL, (channel_id, record_id), payload,
                          kind=kind, channel_id=channel_id, record_id=record_id)
        case ("v1", "gates", record_id):
            if method != "PUT":
                raise _BadRequest(405, f"{method} not allowed")
            payload = _json_object(body)
            status, reason = payload.get("status"), payload.get("reason")
            if status == "Active" and reason in (None, "Running"):
                step = BackendStep.ACTIVATE_GATE
            elif status == "Inactive" and reason == "Deprovisioned":
                step = BackendStep.DEACTIVATE_GATE
            else:
                raise _BadRequest(400, 'expected {"status": "Active"} or '
                                       '{"status": "Inactive", "reason": "Deprovisioned"}')
            return _Route(step, (record_id,), payload, record_id=record_id)
        case ("v1", "calling-tests"):
            if method != "POST":
                raise _BadRequest(405, f"{method} not allowed")
            payload = _json_object(body)
            record_id = _require_str(payload, "record_id")
            _require_str(payload, "phone_number_id")
            return _Route(BackendStep.START_CALLING_TEST, (record_id,), payload,
                          record_id=record_id)
    raise _BadRequest(404, "not found")


# -- the HTTP server -------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so that httpx's connection pool can keep connections alive.
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes; with Nagle on, the second waits for the
    # client's delayed ACK (about 40 ms) on every kept-alive request.
    disable_nagle_algorithm = True

    def _dispatch(self) -> None:
        assert isinstance(self.server, EmulatorServer)
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # The body's end would be unknown to this simple reader; refuse rather than
            # leave it in the kept-alive connection.
            self.close_connection = True
            self.send_error(411, "send a Content-Length")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        reply = self.server.emulator.handle(self.command, self.path, body,
                                            idempotency_key=self.headers.get("Idempotency-Key"),
                                            headers=dict(self.headers.items()))
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        if reply.status != 204:
            self.send_header("Content-Length", str(len(reply.content)))
        self.end_headers()
        self.wfile.write(reply.content)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _dispatch  # noqa: N815 - http.server's names

    def log_message(self, format: str, *args: Any) -> None:
        # http.server writes to stderr; route it through structlog instead.
        log.debug("emulator.http", message=format % args)


class EmulatorServer(ThreadingHTTPServer):
    """The emulator over real HTTP. ``start()`` serves from a daemon thread."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-answer (a killed worker) is normal here: one log
        line, not a traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            log.info("emulator.client_gone", client=str(client_address), error=str(error))
            return
        super().handle_error(request, client_address)

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        super().__init__(address, _Handler)
        self.emulator = emulator
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{host}:{port}"

    def start(self) -> Self:
        self._thread = threading.Thread(target=self.serve_forever, name="backend-emulator",
                                        daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop serving (when started) and close the socket."""
        if self._thread is not None:
            super().shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()


def serve(
    host: str = DEFAULT_HOST, port: int = 0, emulator: Emulator | None = None
) -> EmulatorServer:
    """Serve ``emulator`` (a new default one if None) on ``host:port`` from a thread.

    Port 0 picks a free port; read it from ``.server_address``. Stop with ``.shutdown()``.
    """
    return EmulatorServer((host, port), emulator or Emulator()).start()


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """``python -m worker.emulator``: serve until SIGINT or SIGTERM.

    Options not given on the command line come from EMULATOR_FAILURE_RATE,
    EMULATOR_LATENCY_MS and EMULATOR_SEED; a bad value is a usage error (exit 2).
    """
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="python -m worker.emulator",
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


if __name__ == "__main__":
    raise SystemExit(main())
