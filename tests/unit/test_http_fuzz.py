"""A property-based run over the OpenAPI document (schemathesis, on hypothesis): for any
request the document allows, and for requests it does not, the app never answers 5xx,
and every answer matches the document (status, content type, headers, body schema).

The requests carry an operator's token, so they reach the routes' own validation; the
routes run over the in-memory Service (records and failed entries seeded first)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis import checks

from tests.unit.http_support import make_api
from worker.backends import Backends
from worker.emulators import Emulator
from worker.http.auth import Role
from worker.service import Service
from worker.settings import BackendSettings, Settings
from worker.store.failed import MemoryFailedStore
from worker.store.memory import MemoryStateStore


def _service() -> Service:
    settings = Settings(backends=BackendSettings(
        provisioner_url="http://backends.test", gatekeeper_url="http://backends.test",
        calling_test_url="http://backends.test", backoff_base=0.0, backoff_cap=0.0),
        api_max_body_bytes=64 * 1024)
    client = httpx.Client(transport=Emulator(seed=3).transport())
    backends = Backends(settings.backends, client, sleep=lambda _: None)
    service = Service(settings, MemoryStateStore(), MemoryFailedStore(), backends)
    for number in range(3):  # records, and failed entries (deprovisions of unknown ids)
        record_id = str(uuid.UUID(int=number + 1))
        service.handle_message({"specversion": "1.0", "id": f"seed-{number}", "source": "x",
                                "type": "provision.requested", "subject": record_id,
                                "data": {"name": "Seed", "channel": {
                                    "kind": "teams", "id": str(uuid.uuid4())}}})
        service.handle_message({"specversion": "1.0", "id": f"orphan-{number}",
                                "source": "x", "type": "deprovision.requested",
                                "subject": str(uuid.uuid4())})
    return service


API = make_api(_service())
TOKEN = API.token(Role.OPERATOR, name="fuzzer")
schema = schemathesis.openapi.from_asgi("/openapi.json", API.app)

CHECKS: list[Any] = [checks.not_a_server_error, checks.status_code_conformance,
                     checks.content_type_conformance, checks.response_schema_conformance,
                     checks.response_headers_conformance]


@schema.parametrize()
@hypothesis.settings(max_examples=60, deadline=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_any_request_the_document_allows_is_answered_as_documented(case: Any) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS)


@pytest.mark.parametrize("body", [b"\x00", b"[" * 5000, b'{"specversion": "1.0"}' * 3,
                                  b'[{"id": {"$ne": 1}}]', "ü".encode("utf-16")])
@pytest.mark.parametrize("content_type", ["application/cloudevents+json",
                                          "application/cloudevents-batch+json",
                                          "application/json", "text/plain", ""])
def test_odd_bodies_never_get_a_5xx(body: bytes, content_type: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    answer = API.post("/api/v1/events", token=TOKEN, headers=headers, content=body)
    assert answer.status_code in (202, 400, 415), answer.text
    assert answer.headers["content-type"] in ("application/json", "application/problem+json")
