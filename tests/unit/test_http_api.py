"""The HTTP API in-process (httpx.ASGITransport) over the in-memory Service: who may do
what, ingest in every content mode, records with cursor paging, failed tasks, the audit
log, health, errors as RFC 9457 problems, request ids and metrics."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import replace
from typing import Any

import pytest
from starlette.routing import Route

from tests.unit.http_support import Api, make_api
from worker.http.auth import Role
from worker.http.records import encode_cursor
from worker.service import Service

PROBLEM = "application/problem+json"
STRUCTURED = {"content-type": "application/cloudevents+json"}
BATCH = {"content-type": "application/cloudevents-batch+json"}


def new_id() -> str:
    return str(uuid.uuid4())


def provision(record_id: str, kind: str = "teams", *, event_id: str | None = None,
              **extra: Any) -> dict[str, Any]:
    return {"specversion": "1.0", "id": event_id or new_id(), "source": "tests",
            "type": "provision.requested", "subject": record_id,
            "data": {"name": "Contoso", "channel": {"kind": kind, "id": new_id()}}, **extra}


def deprovision(record_id: str) -> dict[str, Any]:
    return {"specversion": "1.0", "id": new_id(), "source": "tests",
            "type": "deprovision.requested", "subject": record_id}


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def api(memory_service: Service) -> Api:
    return make_api(memory_service)


def drain(service: Service, record_ids: list[str]) -> None:
    for record_id in record_ids:
        service.drain(record_id)


def is_problem(answer: Any, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM
    body: dict[str, Any] = answer.json()
    assert body["status"] == status
    assert body["type"] == "about:blank"
    assert body["title"] and body["detail"]
    return body


# -- who may do what ------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/v1/records"), ("GET", f"/api/v1/records/{uuid.UUID(int=1)}"),
    ("GET", f"/api/v1/records/{uuid.UUID(int=1)}/history"), ("GET", "/api/v1/failed"),
    ("GET", "/api/v1/failed/abc"), ("POST", "/api/v1/failed/abc/replay"),
    ("POST", "/api/v1/failed/replay"), ("POST", "/api/v1/failed/abc/discard"),
    ("GET", "/api/v1/audit"), ("GET", "/api/v1/health"), ("POST", "/api/v1/events"),
])
def test_every_api_path_needs_credentials(api: Api, method: str, path: str) -> None:
    answer = api.request(method, path)
    is_problem(answer, 401)
    assert answer.headers["www-authenticate"] == 'Bearer realm="provisioning"'
    bad = api.request(method, path, token="pst_000000000000_" + "x" * 43)
    is_problem(bad, 401)
    assert bad.headers["www-authenticate"].startswith("Bearer ")
    assert 'error="invalid_token"' in bad.headers["www-authenticate"]


def test_another_scheme_than_bearer_is_unauthenticated(api: Api) -> None:
    token = api.token(Role.OPERATOR)
    answer = api.get("/api/v1/records", headers={"Authorization": f"Basic {token}"})
    assert "Bearer" in is_problem(answer, 401)["detail"]


@pytest.mark.parametrize(("role", "allowed"), [
    (Role.READER, {"read"}), (Role.SUBMITTER, {"read", "submit"}),
    (Role.OPERATOR, {"read", "submit", "operate"}),
])
def test_roles_allow_what_section_8_says(
    api: Api, memory_service: Service, role: Role, allowed: set[str]
) -> None:
    memory_service.handle_message(deprovision(new_id()))  # a failed-task entry
    [entry] = memory_service.failed.all()
    token = api.token(role)
    read = api.get("/api/v1/failed", token=token)
    submit = api.post("/api/v1/events", token=token, headers=STRUCTURED,
                      content=json.dumps(provision(new_id())))
    operate = api.post(f"/api/v1/failed/{entry.id}/discard", token=token,
                       json={"reason": "test"})
    for name, answer, ok in (("read", read, 200), ("submit", submit, 202),
                             ("operate", operate, 200)):
        if name in allowed:
            assert answer.status_code == ok, answer.text
        else:
            assert "needs the" in is_problem(answer, 403)["detail"]


def test_a_revoked_token_is_refused_at_its_next_request(api: Api) -> None:
    token = api.token(Role.READER, name="dashboard")
    assert api.get("/api/v1/records", token=token).status_code == 200
    assert api.tokens.revoke("dashboard")
    is_problem(api.get("/api/v1/records", token=token), 401)


def test_an_expired_token_is_refused(memory_service: Service) -> None:
    clock = Clock()
    api = make_api(memory_service, clock=clock)
    token = api.token(Role.READER, expires_in=3600)
    assert api.get("/api/v1/records", token=token).status_code == 200
    clock.now += 3600
    is_problem(api.get("/api/v1/records", token=token), 401)


def test_a_token_with_a_right_id_and_a_wrong_secret_is_refused(api: Api) -> None:
    token = api.token(Role.OPERATOR)
    forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    is_problem(api.get("/api/v1/records", token=forged), 401)


def test_only_a_hash_is_stored_and_last_use_is_written_at_most_once_a_minute(
    memory_service: Service,
) -> None:
    clock = Clock()
    api = make_api(memory_service, clock=clock)
    created = api.tokens.create("ci", Role.SUBMITTER)
    secret = created.token.rsplit("_", 1)[1]
    stored = json.dumps({key: api.tokens.client.hgetall(key) if api.tokens.client.type(key)
                         == "hash" else None for key in api.tokens.client.keys("*")})
    assert created.token not in stored
    assert secret not in stored
    assert created.token not in repr(created)
    [entry] = api.tokens.entries()
    assert entry.last_used_at is None
    assert "digest" not in repr(entry) and entry.digest not in repr(entry)
    assert api.tokens.verify(created.token) is not None
    assert api.tokens.entries()[0].last_used_at == clock.now
    first = clock.now
    clock.now += 30
    api.tokens.verify(created.token)
    assert api.tokens.entries()[0].last_used_at == first  # not rewritten within a minute
    clock.now += 31
    api.tokens.verify(created.token)
    assert api.tokens.entries()[0].last_used_at == clock.now
    listed = api.tokens.entries()[0].to_json()
    assert set(listed) == {"name", "role", "created", "expires", "last_used"}


def test_a_token_name_is_unique_and_well_formed(api: Api) -> None:
    from worker.http.auth import TokenExists

    api.tokens.create("ci", Role.READER)
    with pytest.raises(TokenExists, match="revoke it first"):
        api.tokens.create("ci", Role.OPERATOR)
    with pytest.raises(ValueError, match="not a token name"):
        api.tokens.create("has space", Role.READER)


# -- POST /api/v1/events --------------------------------------------------------------------


@pytest.fixture
def submitter(api: Api) -> str:
    return api.token(Role.SUBMITTER, name="onboarding")


def test_a_structured_event_is_accepted_and_applied(
    api: Api, memory_service: Service, submitter: str
) -> None:
    record_id = new_id()
    answer = api.post("/api/v1/events", token=submitter, headers=STRUCTURED,
                      content=json.dumps(provision(record_id)))
    assert answer.status_code == 202
    assert answer.json() == {"accepted": 1, "duplicates": 0, "refused": []}
    drain(memory_service, [record_id])
    record = memory_service.store.load(record_id)
    assert record is not None
    assert record.status.label == "Running"


def test_a_batch_accepts_the_valid_events_and_names_every_problem_of_the_others(
    api: Api, memory_service: Service, submitter: str
) -> None:
    good = [provision(new_id()) for _ in range(3)]
    bad = provision(new_id())
    bad["data"]["name"] = "x" * 101
    del bad["source"]
    batch = [good[0], bad, good[1], 42, good[2]]
    answer = api.post("/api/v1/events", token=submitter, headers=BATCH,
                      content=json.dumps(batch))
    assert answer.status_code == 202
    body = answer.json()
    assert (body["accepted"], body["duplicates"]) == (3, 0)
    refused = {item["index"]: item["problems"] for item in body["refused"]}
    assert set(refused) == {1, 3}
    assert {p["path"] for p in refused[1]} == {"source", "data.name"}
    assert refused[3][0]["path"] == ""
    assert sorted(memory_service.store.pending()) == sorted(e["subject"] for e in good)


def test_the_event_id_is_the_idempotency_key(
    api: Api, memory_service: Service, submitter: str
) -> None:
    event = provision(new_id())
    first = api.post("/api/v1/events", token=submitter, headers=STRUCTURED,
                     content=json.dumps(event))
    again = api.post("/api/v1/events", token=submitter, headers=BATCH,
                     content=json.dumps([event, event]))
    assert first.json()["accepted"] == 1
    assert again.status_code == 202
    assert again.json() == {"accepted": 0, "duplicates": 2, "refused": []}
    assert memory_service.store.inbox_size(event["subject"]) == 1


def test_none_valid_is_a_400_problem_with_index_and_path(api: Api, submitter: str) -> None:
    bad = provision("not-a-uuid")
    answer = api.post("/api/v1/events", token=submitter, headers=BATCH,
                      content=json.dumps([bad, {"specversion": "0.3"}]))
    body = is_problem(answer, 400)
    assert {"index": 0, "path": "subject", "reason": body["errors"][0]["reason"]} in (
        body["errors"])
    assert any(e["index"] == 1 and e["path"] == "specversion" for e in body["errors"])


def test_binary_mode_takes_the_attributes_from_headers(
    api: Api, memory_service: Service, submitter: str
) -> None:
    record_id = new_id()
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    data = {"name": "Contoso Voice", "channel": {"kind": "teams", "id": new_id()}}
    answer = api.post("/api/v1/events", token=submitter, content=json.dumps(data), headers={
        "content-type": "application/json; charset=utf-8", "ce-specversion": "1.0",
        "ce-id": "evt%20binary-1", "ce-source": "onboarding", "ce-type": "provision.requested",
        "ce-subject": record_id, "ce-time": "2026-11-27T10:00:00Z", "ce-traceparent": trace})
    assert answer.status_code == 202, answer.text
    assert answer.json()["accepted"] == 1
    head = memory_service.store.head(record_id)
    assert head is not None
    assert head.event_id == "evt binary-1"  # percent-decoded, as the binding says
    event = json.loads(head.payload)["event"]
    assert (event["source"], event["time"], event["data"]["name"]) == (
        "onboarding", "2026-11-27T10:00:00Z", "Contoso Voice")


def test_binary_mode_problems_name_the_headers(api: Api, submitter: str) -> None:
    answer = api.post("/api/v1/events", token=submitter, headers={
        "ce-specversion": "1.0", "ce-type": "deprovision.requested", "ce-source": "x"})
    body = is_problem(answer, 400)
    assert {e["path"] for e in body["errors"]} == {"ce-id", "ce-subject"}


def test_binary_mode_data_problems_keep_their_data_path(api: Api, submitter: str) -> None:
    answer = api.post("/api/v1/events", token=submitter, content=b'{"name": 5}', headers={
        "content-type": "application/json", "ce-specversion": "1.0", "ce-id": "e1",
        "ce-source": "x", "ce-type": "provision.requested", "ce-subject": new_id()})
    paths = {e["path"] for e in is_problem(answer, 400)["errors"]}
    assert "data.name" in paths
    assert all(p.startswith("data") for p in paths)


@pytest.mark.parametrize(("headers", "body", "status", "reason"), [
    ({"content-type": "text/plain"}, b"hello", 415, None),
    ({"content-type": "application/xml"}, b"<e/>", 415, None),
    ({}, b"{}", 415, None),
    ({**STRUCTURED}, b"{not json", 400, "not valid JSON"),
    ({**STRUCTURED}, b"", 400, "an event is required"),
    ({**STRUCTURED}, b'{"a": NaN}', 400, "NaN is not JSON"),
    ({**STRUCTURED}, b"\xff\xfe\x00", 400, "not"),
    ({**STRUCTURED}, b"[" * 100000, 400, "nested too deep"),
    ({**BATCH}, b"{}", 400, "must be a JSON array"),
    ({**BATCH}, b"[]", 400, "is empty"),
    ({"ce-specversion": "1.0", "content-type": "text/plain"}, b"x", 415, None),
])
def test_bad_bodies_and_content_types_are_problems_never_500(
    api: Api, submitter: str, headers: dict[str, str], body: bytes, status: int,
    reason: str | None,
) -> None:
    answer = api.post("/api/v1/events", token=submitter, headers=headers, content=body)
    problem = is_problem(answer, status)
    if reason is not None:
        assert any(reason in error["reason"] for error in problem["errors"]), problem


def test_a_body_over_the_limit_is_413(memory_service: Service) -> None:
    memory_service.settings = replace(memory_service.settings, api_max_body_bytes=1000)
    api = make_api(memory_service)
    token = api.token(Role.SUBMITTER)
    events = [provision(new_id()) for _ in range(10)]
    answer = api.post("/api/v1/events", token=token, headers=BATCH, content=json.dumps(events))
    assert "PROVISIONING_API_MAX_BODY_BYTES" in is_problem(answer, 413)["detail"]

    async def chunks() -> Any:  # no Content-Length: counted while reading
        for _ in range(20):
            yield b" " * 100

    streamed = api.post("/api/v1/events", token=token, headers=BATCH, content=chunks())
    is_problem(streamed, 413)


# -- records --------------------------------------------------------------------------------


@pytest.fixture
def reader(api: Api) -> str:
    return api.token(Role.READER, name="dashboard")


def make_records(memory_service: Service, count: int, kind: str = "teams") -> list[str]:
    ids = [new_id() for _ in range(count)]
    for record_id in ids:
        memory_service.handle_message(provision(record_id, kind))
    return sorted(ids)


def test_records_are_paged_with_a_next_link_until_the_last_page(
    api: Api, memory_service: Service, reader: str
) -> None:
    ids = make_records(memory_service, 5)
    seen: list[str] = []
    url = "/api/v1/records?limit=2&status=running"
    pages = 0
    while url:
        answer = api.get(url, token=reader)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        seen += [row["msdyn_ocprovisioningstateid"] for row in body["value"]]
        pages += 1
        url = body.get("@odata.nextLink", "")
        if url:
            assert url.startswith("http://api.test/api/v1/records?")
            assert "status=running" in url and "limit=2" in url
    assert seen == ids
    assert pages == 3
    row = api.get("/api/v1/records?limit=1", token=reader).json()["value"][0]
    assert row == memory_service.store.load(ids[0]).to_dataverse()  # type: ignore[union-attr]


def test_record_filters_by_status_and_kind(
    api: Api, memory_service: Service, reader: str
) -> None:
    teams = make_records(memory_service, 2, "teams")
    make_records(memory_service, 1, "facebook")
    answer = api.get("/api/v1/records?kind=teams&status=Running", token=reader)
    assert [r["msdyn_ocprovisioningstateid"] for r in answer.json()["value"]] == teams
    assert api.get("/api/v1/records?status=Error", token=reader).json() == {"value": []}


@pytest.mark.parametrize(("query", "path"), [
    ("limit=0", "limit"), ("limit=1001", "limit"), ("limit=ten", "limit"),
    ("status=Sleeping", "status"), ("kind=fax", "kind"), ("cursor=bm90LWEtY3Vyc29y", "cursor"),
    ("cursor=%%%", "cursor"),
])
def test_bad_query_parameters_are_named(api: Api, reader: str, query: str, path: str) -> None:
    body = is_problem(api.get(f"/api/v1/records?{query}", token=reader), 400)
    assert body["errors"][0]["path"] == path


def test_a_cursor_past_the_end_gives_an_empty_last_page(api: Api, reader: str) -> None:
    cursor = encode_cursor("ffffffff-ffff-4fff-bfff-ffffffffffff")
    assert api.get(f"/api/v1/records?cursor={cursor}", token=reader).json() == {"value": []}


def test_one_record_has_its_etag_and_an_unknown_one_is_404(
    api: Api, memory_service: Service, reader: str
) -> None:
    [record_id] = make_records(memory_service, 1)
    answer = api.get(f"/api/v1/records/{record_id}", token=reader)
    assert answer.status_code == 200
    assert answer.headers["etag"] == answer.json()["@odata.etag"] == 'W/"3"'
    is_problem(api.get(f"/api/v1/records/{new_id()}", token=reader), 404)
    assert is_problem(api.get("/api/v1/records/nope", token=reader), 400)["errors"][0][
        "path"] == "id"


def test_history_is_kept_for_a_record_deleted_by_a_cascade(
    api: Api, memory_service: Service, reader: str
) -> None:
    record_id, account = new_id(), new_id()
    event = provision(record_id, "whatsapp")
    event["data"]["channel"]["id"] = account
    event["data"]["links"] = {"msdyn_ocwhatsappchannelaccountid": account}
    memory_service.handle_message(event)
    memory_service.handle_message({
        "specversion": "1.0", "id": new_id(), "source": "tests", "type": "parent.deleted",
        "data": {"table": "msdyn_ocwhatsappchannelaccount", "id": account}})
    is_problem(api.get(f"/api/v1/records/{record_id}", token=reader), 404)
    history = api.get(f"/api/v1/records/{record_id}/history", token=reader)
    assert history.status_code == 200
    entries = history.json()["value"]
    assert entries[-1]["trigger"] == "delete"
    assert set(entries[0]) >= {"version", "event_id", "event_type", "trigger", "outcome",
                               "reason", "from", "to", "at", "task_id"}
    is_problem(api.get(f"/api/v1/records/{new_id()}/history", token=reader), 404)


# -- failed tasks, replay, discard, audit ---------------------------------------------------


@pytest.fixture
def operator(api: Api) -> str:
    return api.token(Role.OPERATOR, name="ana")


def failed_entry(memory_service: Service, record_id: str | None = None) -> tuple[str, str]:
    """A deprovision for a record that does not exist yet: a failed-task entry."""
    record_id = record_id or new_id()
    memory_service.handle_message(deprovision(record_id))
    entry = next(e for e in memory_service.failed.all() if e.record_id == record_id)
    return entry.id, record_id


def test_failed_entries_are_listed_filtered_and_shown(
    api: Api, memory_service: Service, reader: str
) -> None:
    entry_id, record_id = failed_entry(memory_service)
    failed_entry(memory_service)
    listed = api.get("/api/v1/failed", token=reader).json()["value"]
    assert len(listed) == 2
    assert set(listed[0]) >= {"id", "task", "event_id", "event_type", "record_id", "exception",
                              "message", "attempts", "first_failed_at", "last_failed_at"}
    assert "traceback" not in listed[0]
    one = api.get(f"/api/v1/failed?record={record_id}&since=1h", token=reader).json()["value"]
    assert [e["id"] for e in one] == [entry_id]
    assert api.get("/api/v1/failed?older_than=1h", token=reader).json() == {"value": []}
    shown = api.get(f"/api/v1/failed/{entry_id}", token=reader).json()
    assert shown == memory_service.failed.get(entry_id).to_json()  # type: ignore[union-attr]
    is_problem(api.get("/api/v1/failed/000000000000", token=reader), 404)
    errors = is_problem(api.get("/api/v1/failed?since=yesterday&record=x&colour=red",
                                token=reader), 400)["errors"]
    assert {e["path"] for e in errors} == {"since", "record", "colour"}


def test_a_replay_is_audited_under_the_token_name_never_a_declared_one(
    api: Api, memory_service: Service, operator: str
) -> None:
    entry_id, record_id = failed_entry(memory_service)
    memory_service.handle_message(provision(record_id))  # now the record exists
    answer = api.post(f"/api/v1/failed/{entry_id}/replay?operator=mallory", token=operator,
                      headers={"X-Operator": "mallory"}, json={"operator": "mallory"})
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"replayed": [entry_id]}
    record = memory_service.store.load(record_id)
    assert record is not None
    assert record.status.label == "Deprovisioned"
    audit = api.get("/api/v1/audit", token=operator).json()["value"]
    assert [(a["operator"], a["action"], a["entries"]) for a in audit] == [
        ("worker", "resolved", [entry_id]), ("ana", "replay", [entry_id])]  # newest first
    is_problem(api.post("/api/v1/failed/000000000000/replay", token=operator), 404)


def test_a_replay_that_cannot_be_sent_is_a_409_and_stays(
    api: Api, memory_service: Service, operator: str
) -> None:
    memory_service.handle_message({"id": "broken", "type": "provision.requested"})
    [entry] = memory_service.failed.all()
    answer = api.post(f"/api/v1/failed/{entry.id}/replay", token=operator)
    assert "still invalid" in is_problem(answer, 409)["detail"]
    assert memory_service.failed.get(entry.id) is not None


def test_a_bulk_replay_acts_on_a_snapshot_and_a_dry_run_changes_nothing(
    api: Api, memory_service: Service, operator: str
) -> None:
    first, _ = failed_entry(memory_service)
    second, _ = failed_entry(memory_service)
    dry = api.post("/api/v1/failed/replay", token=operator,
                   json={"all": True, "filters": {"event_type": "deprovision.requested"},
                         "dry_run": True})
    assert dry.status_code == 200
    assert sorted(dry.json()["snapshot"]) == sorted([first, second])
    assert dry.json()["replayed"] == []
    assert len(memory_service.failed.all()) == 2
    assert api.replays == []
    named = api.post("/api/v1/failed/replay", token=operator,
                     json={"ids": [first, "000000000000"]})
    assert named.status_code == 202
    assert named.json()["snapshot"] == [first]
    assert named.json()["replayed"] == [first]
    assert named.json()["missing"] == ["000000000000"]
    assert [entry_id for _, entry_id in api.replays] == [first]
    everything = api.post("/api/v1/failed/replay", token=operator, json={"all": True})
    assert everything.status_code == 202
    assert everything.json()["snapshot"] == everything.json()["replayed"]


@pytest.mark.parametrize(("body", "paths"), [
    ({}, {"ids"}), ({"ids": ["a"], "all": True}, {"ids"}), ({"ids": "a"}, {"ids"}),
    ({"all": "yes"}, {"all", "ids"}), ({"ids": [], "dry_run": 1}, {"dry_run"}),
    ({"all": True, "filters": {"colour": "red"}}, {"filters.colour"}),
    ({"ids": ["a"], "filters": {"task": "x"}}, {"filters"}), ({"ids": ["a"], "x": 1}, {"x"}),
])
def test_a_bad_bulk_replay_request_names_every_field(
    api: Api, operator: str, body: dict[str, Any], paths: set[str]
) -> None:
    answer = api.post("/api/v1/failed/replay", token=operator, json=body)
    assert {e["path"] for e in is_problem(answer, 400)["errors"]} == paths


def test_discard_needs_a_reason_and_is_audited(
    api: Api, memory_service: Service, operator: str
) -> None:
    entry_id, _ = failed_entry(memory_service)
    for body in (None, {}, {"reason": " "}, {"reason": 5}):
        answer = api.post(f"/api/v1/failed/{entry_id}/discard", token=operator,
                          **({"json": body} if body is not None else {}))
        is_problem(answer, 400)
    assert memory_service.failed.get(entry_id) is not None
    answer = api.post(f"/api/v1/failed/{entry_id}/discard", token=operator,
                      json={"reason": "test channel, never real"})
    assert answer.status_code == 200
    assert answer.json() == {"discarded": [entry_id]}
    assert memory_service.failed.get(entry_id) is None
    [line] = api.get("/api/v1/audit?limit=5", token=operator).json()["value"]
    assert (line["operator"], line["action"], line["reason"], line["entries"]) == (
        "ana", "discard", "test channel, never real", [entry_id])
    is_problem(api.post(f"/api/v1/failed/{entry_id}/discard", token=operator,
                        json={"reason": "again"}), 404)


# -- health, probes, errors, observability --------------------------------------------------


def test_probes_need_no_credentials(api: Api) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ok"}


def test_readyz_is_503_when_the_store_does_not_answer(memory_service: Service) -> None:
    import redis

    from worker.emulators.embedded import free_port
    from worker.store.redis import RedisStateStore

    memory_service.store = RedisStateStore(
        redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", decode_responses=True))
    api = make_api(memory_service)
    is_problem(api.get("/readyz"), 503)
    token = api.token(Role.READER)
    body = is_problem(api.get("/api/v1/records", token=token), 503)
    assert "record store" in body["detail"]


def test_health_is_what_provisioning_health_json_prints(memory_service: Service) -> None:
    checks = {"ok": False, "checks": [{"name": "beat", "ok": False, "detail": "no heartbeat",
                                       "seconds": 0.0}]}
    api = make_api(memory_service, health=checks)
    assert api.get("/api/v1/health", token=api.token(Role.READER)).json() == checks


def test_unknown_paths_and_methods_are_problems(api: Api) -> None:
    is_problem(api.get("/api/v2/records"), 404)
    is_problem(api.request("DELETE", "/api/v1/records"), 405)


def test_a_bug_answers_a_500_problem_without_details(memory_service: Service) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("internal detail that must not leak")

    api = make_api(memory_service)
    api.app.state.api = replace(api.app.state.api, health=broken)
    answer = api.get("/api/v1/health", token=api.token(Role.READER))
    body = is_problem(answer, 500)
    assert "internal detail" not in answer.text
    assert "request id" in body["detail"]


def test_request_ids_are_echoed_or_made_and_logged_with_the_identity(
    api: Api, reader: str, capsys: pytest.CaptureFixture[str]
) -> None:
    given = api.get("/api/v1/records", token=reader, headers={"X-Request-ID": "req-42"})
    assert given.headers["x-request-id"] == "req-42"
    made = api.get("/api/v1/records", token=reader, headers={"X-Request-ID": "bad id\t!"})
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if "req-42" in line]
    assert "http_request" in line and "identity=dashboard" in line and "status=200" in line
    assert reader not in err


def test_metrics_count_requests_by_route_template(
    api: Api, memory_service: Service, reader: str
) -> None:
    [record_id] = make_records(memory_service, 1)
    api.get(f"/api/v1/records/{record_id}", token=reader)
    api.get(f"/api/v1/records/{new_id()}", token=reader)
    text = api.get("/metrics").text
    assert ('provisioning_http_requests_total{method="GET",route="/api/v1/records/{id}",'
            'status="200"} 1.0') in text
    assert 'route="/api/v1/records/{id}",status="404"} 1.0' in text
    assert record_id not in text
    assert 'provisioning_http_request_duration_seconds_bucket{le="0.001"' in text or (
        "provisioning_http_request_duration_seconds_bucket" in text)


def test_the_openapi_document_names_every_route_of_the_app(api: Api) -> None:
    spec = api.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, item in spec["paths"].items()
                  for method in item}
    served = {(route.path, method) for route in api.app.routes if isinstance(route, Route)
              for method in (route.methods or set()) if method != "HEAD"}
    assert documented == served
