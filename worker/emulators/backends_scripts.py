"""Scripted answers of the backends emulator: what a test (or the admin API) tells a backend
to answer instead of behaving normally.

A script is kept per (step, target), where target is a channel id, a record id or
:data:`ANY_TARGET`: a queue of :class:`Answer` consumed one per request, then an optional
``then`` answer given forever. The admin API's JSON form of a script is read by
:func:`script_from_json`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from statemachine import BackendStep

__all__ = ["ANY_TARGET", "Answer", "AnswerLike", "Script", "ScriptRequest", "script_from_json"]

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

    @property
    def behaves_normally(self) -> bool:
        """A 2xx without a body: the backend's normal answer (and state change)."""
        return 200 <= self.status < 300 and self.body is None


AnswerLike = int | tuple[int, object] | Answer


def _status(value: int) -> int:
    if not 200 <= value <= 599:
        raise ValueError(f"status {value} is not between 200 and 599")
    return value


@dataclass
class Script:
    """The answers queued for one (step, target), then the one given forever (if any)."""

    queue: deque[Answer] = field(default_factory=deque)
    then: Answer | None = None

    def next(self) -> Answer | None:
        """Consume the next answer; None when the script has nothing (left) to say."""
        if self.queue:
            return self.queue.popleft()
        return self.then


@dataclass(frozen=True)
class ScriptRequest:
    """The admin API's ``POST /_emulator/script``, checked."""

    target: str
    step: BackendStep
    answers: tuple[Answer, ...]
    then: Answer | None


def script_from_json(body: object) -> ScriptRequest:
    """Read ``{"target", "step", "answers", "then"}``; ValueError when malformed."""
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
    return ScriptRequest(target, BackendStep(step),
                         tuple(Answer.from_json(a) for a in answers),
                         Answer.from_json(then) if then is not None else None)
