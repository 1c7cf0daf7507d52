"""Celery's consumer, keeping what it refuses instead of only logging it (SPEC §3).

The worker accepts JSON only, so a pickle (or otherwise undecodable) message is never
decoded here: its raw body is kept base64-encoded, with its content type and headers, in
the failed-task store, where an operator can read it. Then Celery's own handling (log,
acknowledge or reject) goes on as before.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import structlog
from celery.worker.consumer import Consumer as CeleryConsumer

from worker.app import process_service
from worker.errors import UndecodableMessage

log = structlog.get_logger("worker")


class Consumer(CeleryConsumer):
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        _keep(message, f"cannot decode: {exc}")
        super().on_decode_error(message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        _keep(message, f"invalid task message: {exc}")
        super().on_invalid_task(body, message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        _keep(message, "not a task message")
        super().on_unknown_message(body, message)


def _keep(message: Any, why: str) -> None:
    """Record the raw message in the failed-task store; never raises."""
    try:
        raw = message.body
        data = raw if isinstance(raw, bytes) else str(raw).encode("utf-8", "replace")
        headers = json.loads(json.dumps(dict(message.headers or {}), default=repr))
        body = {
            "content_type": message.content_type,
            "content_encoding": message.content_encoding,
            "headers": headers,
            "body_base64": base64.b64encode(data).decode("ascii"),
        }
        task = str(headers.get("task") or "unknown")
        process_service().refuse(
            None, UndecodableMessage(why), task=task, body=body,
            reasons=[f"content type {message.content_type!r}: only application/json is "
                     "accepted", why])
    except Exception as exc:  # noqa: BLE001 - the consumer must go on whatever happens here
        log.error("undecodable_message_not_kept", error=str(exc))
