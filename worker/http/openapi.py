"""``GET /openapi.json``: the OpenAPI 3.1 document of the HTTP API, written here by hand
next to the routes it describes. tests/unit/test_http_openapi.py checks that it names every
route of the app and that the app's answers match it (a schemathesis run over it)."""

from __future__ import annotations

from typing import Any

from statemachine import LOOKUPS, ChannelKind, EventType, StatusReason

PROBLEM = "application/problem+json"
_NULLABLE_STR = {"type": ["string", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _problem(description: str, schema: str = "Problem") -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM: {"schema": _ref(schema)}}}


_AUTH = {
    "401": {**_problem("no valid credentials"), "headers": {
        "WWW-Authenticate": {"schema": {"type": "string", "pattern": "^Bearer"}}}},
    "403": _problem("the credentials' role may not do this"),
    "503": _problem("the record store (or the OIDC issuer's keys) cannot be reached"),
}


def _op(summary: str, responses: dict[str, Any], *, params: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None, secured: bool = True) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary,
                                 "responses": {**responses, **(_AUTH if secured else {})}}
    if params:
        operation["parameters"] = params
    if body:
        operation["requestBody"] = body
    if not secured:
        operation["security"] = []
    return operation


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _path(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


_LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                "how many (1..1000)")
_FILTER_PARAMS = [
    _query("event_type", {"type": "string"}, "e.g. provision.requested"),
    _query("record", {"type": "string", "format": "uuid"}, "the record id"),
    _query("exception", {"type": "string"}, "e.g. UnknownRecord"),
    _query("task", {"type": "string"}, "e.g. provisioning.retry"),
    _query("since", {"type": "string"}, "last failed at or after (30m, 2h, 7d or ISO 8601)"),
    _query("older_than", {"type": "string"}, "last failed before (30m, 2h, 7d or ISO 8601)"),
]
_ENTRY = _path("entry", {"type": "string"})
_RECORD_ID = _path("id", {"type": "string", "format": "uuid"})


def _schemas() -> dict[str, Any]:
    choice = {"type": ["integer", "null"]}
    lookups = {f"_{lookup.column}_value": {"type": ["string", "null"]} for lookup in LOOKUPS}
    return {
        "Problem": {
            "type": "object", "required": ["type", "title", "status", "detail"],
            "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                           "status": {"type": "integer"}, "detail": {"type": "string"},
                           "errors": {"type": "array", "items": _ref("FieldError")}},
        },
        "FieldError": {
            "type": "object", "required": ["index", "path", "reason"],
            "properties": {"index": {"type": ["integer", "null"]},
                           "path": {"type": "string"}, "reason": {"type": "string"}},
        },
        "CloudEvent": {
            "type": "object", "description": "A CloudEvents 1.0 event in structured form "
                                             "(docs/contract.md#events-in); any value is "
                                             "accepted here and refused with its problems "
                                             "when not valid. Extension attributes "
                                             "(traceparent, tracestate and any other: "
                                             "lowercase a-z0-9 names, string, integer or "
                                             "boolean values) are kept as they arrived "
                                             "(docs/tracing.md).",
            "properties": {
                "specversion": {"const": "1.0"}, "id": {"type": "string"},
                "source": {"type": "string"},
                "type": {"enum": [t.value for t in EventType]},
                "subject": {"type": "string", "format": "uuid"},
                "time": {"type": "string", "format": "date-time"},
                "traceparent": {"type": "string"}, "tracestate": {"type": "string"},
                "data": {},
            },
        },
        "SubmitResult": {
            "type": "object", "required": ["accepted", "duplicates", "refused"],
            "properties": {
                "accepted": {"type": "integer", "minimum": 0},
                "duplicates": {"type": "integer", "minimum": 0},
                "refused": {"type": "array", "items": {
                    "type": "object", "required": ["index", "problems"],
                    "properties": {"index": {"type": "integer"}, "problems": {
                        "type": "array", "items": {
                            "type": "object", "required": ["path", "reason"],
                            "properties": {"path": {"type": "string"},
                                           "reason": {"type": "string"}}}}}}},
            },
        },
        "Record": {
            "type": "object",
            "description": "A record in Dataverse Web API shape "
                           "(docs/contract.md#a-record-as-json)",
            "required": ["@odata.etag", "msdyn_ocprovisioningstateid", "msdyn_name",
                         "statecode", "statuscode", "versionnumber", *lookups],
            "properties": {
                "@odata.etag": {"type": "string"},
                "msdyn_ocprovisioningstateid": {"type": "string", "format": "uuid"},
                "msdyn_name": {"type": "string"},
                "statecode": {"type": "integer"},
                "statuscode": {"enum": [int(s) for s in StatusReason]},
                "msdyn_gatekeeperstatus": choice, "msdyn_gatekeeperstatusreason": choice,
                "msdyn_automatedcallingstatus": choice,
                "msdyn_exceptiondetails": _NULLABLE_STR, "msdyn_errormessage": _NULLABLE_STR,
                "msdyn_provisioningresponse": _NULLABLE_STR,
                "versionnumber": {"type": "integer"}, **lookups,
            },
        },
        "RecordPage": {
            "type": "object", "required": ["value"],
            "properties": {"value": {"type": "array", "items": _ref("Record")},
                           "@odata.nextLink": {"type": "string", "format": "uri"}},
        },
        "HistoryEntry": {
            "type": "object", "description": "A history entry (docs/contract.md#history-entries)",
            "required": ["version", "event_id", "event_type", "trigger", "outcome", "reason",
                         "from", "to", "at", "task_id"],
            "properties": {
                "version": {"type": ["integer", "null"]}, "event_id": {"type": "string"},
                "event_type": {"type": "string"}, "trigger": {"type": "string"},
                "outcome": {"enum": ["applied", "ignored", "rejected", "duplicate", "stale"]},
                "reason": {"type": "string"}, "from": {"type": ["object", "null"]},
                "to": {"type": ["object", "null"]}, "at": {"type": "string"},
                "task_id": _NULLABLE_STR,
            },
        },
        "FailedEntry": {
            "type": "object", "description": "as `failed list --json` prints it",
            "required": ["id", "task", "event_id", "event_type", "record_id", "exception",
                         "message", "attempts", "first_failed_at", "last_failed_at"],
            "properties": {
                "id": {"type": "string"}, "task": {"type": "string"},
                "event_id": _NULLABLE_STR, "event_type": _NULLABLE_STR,
                "record_id": _NULLABLE_STR, "exception": {"type": "string"},
                "message": {"type": "string"}, "attempts": {"type": "integer"},
                "first_failed_at": {"type": "string"}, "last_failed_at": {"type": "string"},
                "reasons": {"type": "array", "items": {"type": "string"}},
            },
        },
        "FailedEntryFull": {
            "description": "as `failed show --json` prints it",
            "allOf": [_ref("FailedEntry"), {
                "type": "object", "required": ["traceback", "body"],
                "properties": {"traceback": {"type": "string"}, "body": {"type": "object"}}}],
        },
        "ReplayRequest": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "ids": {"type": "array", "items": {"type": "string"}, "maxItems": 1000},
                "all": {"type": "boolean"},
                "filters": {"type": "object", "additionalProperties": False, "properties": {
                    name: {"type": "string"} for name in
                    ("event_type", "record", "exception", "task", "since", "older_than")}},
                "dry_run": {"type": "boolean"},
            },
        },
        "ReplayResult": {
            "type": "object", "required": ["snapshot", "replayed"],
            "properties": {
                "snapshot": {"type": "array", "items": {"type": "string"}},
                "replayed": {"type": "array", "items": {"type": "string"}},
                "missing": {"type": "array", "items": {"type": "string"}},
                "refused": {"type": "array", "items": {
                    "type": "object", "required": ["id", "reason"],
                    "properties": {"id": {"type": "string"}, "reason": {"type": "string"}}}},
                "dry_run": {"type": "boolean"},
            },
        },
        "AuditLine": {
            "type": "object", "required": ["at", "operator", "action", "entries", "reason"],
            "properties": {"at": {"type": "string"}, "operator": {"type": "string"},
                           "action": {"type": "string"},
                           "entries": {"type": "array", "items": {"type": "string"}},
                           "reason": {"type": "string"}},
        },
        "Health": {
            "type": "object", "required": ["ok", "checks"],
            "properties": {"ok": {"type": "boolean"}, "checks": {"type": "array", "items": {
                "type": "object", "required": ["name", "ok", "detail", "seconds"],
                "properties": {"name": {"type": "string"}, "ok": {"type": "boolean"},
                               "detail": {"type": "string"}, "seconds": {"type": "number"}}}}},
        },
        "Status": {"type": "object", "required": ["status"],
                   "properties": {"status": {"const": "ok"}}},
    }


def _list_of(name: str) -> dict[str, Any]:
    return {"type": "object", "required": ["value"],
            "properties": {"value": {"type": "array", "items": _ref(name)}}}


def document() -> dict[str, Any]:
    """The OpenAPI document (a new dict each call)."""
    bad = _problem("a parameter or the body is not valid (each problem in errors)")
    missing = _problem("not found")
    events_body = {"required": True, "content": {
        "application/cloudevents+json": {"schema": _ref("CloudEvent")},
        "application/cloudevents-batch+json": {
            "schema": {"type": "array", "items": _ref("CloudEvent")}},
        "application/json": {"schema": {}, "description": "binary mode: the data; the "
                                                          "attributes in ce-* headers"},
    }}
    kinds = [k.value for k in ChannelKind]
    return {
        "openapi": "3.1.0",
        "info": {"title": "Provisioning State worker", "version": "1",
                 "description": "msdyn_ocprovisioningstate records, their events and their "
                                "failed tasks (docs/api.md). Errors are RFC 9457 problems."},
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "an API token (provisioning token create) or an OIDC JWT"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {"get": _op("the process is up", {
                "200": _json(_ref("Status"), "up")}, secured=False)},
            "/readyz": {"get": _op("the record store answers", {
                "200": _json(_ref("Status"), "ready"),
                "503": _problem("the store does not answer")}, secured=False)},
            "/openapi.json": {"get": _op("this document", {
                "200": _json({"type": "object"}, "OpenAPI 3.1")}, secured=False)},
            "/metrics": {"get": _op("Prometheus metrics of this process", {
                "200": {"description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}}}},
                secured=False)},
            "/api/v1/events": {"post": _op("accept events (submitter)", {
                "202": _json(_ref("SubmitResult"), "the valid events were accepted"),
                "400": _problem("no event is valid"),
                "413": _problem("the body is over PROVISIONING_API_MAX_BODY_BYTES"),
                "415": _problem("not a CloudEvents content mode"),
            }, body=events_body, params=[
                {"name": name, "in": "header", "required": False,
                 "schema": {"type": "string"}, "description": "binary mode attribute"}
                for name in ("ce-specversion", "ce-id", "ce-source", "ce-type", "ce-subject",
                             "ce-time", "ce-traceparent")])},
            "/api/v1/records": {"get": _op("records, a page at a time (reader)", {
                "200": _json(_ref("RecordPage"), "a page; @odata.nextLink absent on the last"),
                "400": bad,
            }, params=[
                _query("status", {"enum": [s.label for s in StatusReason]}, "status reason"),
                _query("kind", {"enum": kinds}, "channel kind"), _LIMIT,
                _query("cursor", {"type": "string"}, "from @odata.nextLink"),
            ])},
            "/api/v1/records/{id}": {"get": _op("one record (reader)", {
                "200": {**_json(_ref("Record"), "the record"), "headers": {
                    "ETag": {"schema": {"type": "string"}, "description": "its @odata.etag"}}},
                "400": bad, "404": missing,
            }, params=[_RECORD_ID])},
            "/api/v1/records/{id}/history": {"get": _op("a record's history (reader)", {
                "200": _json(_list_of("HistoryEntry"), "oldest first"),
                "400": bad, "404": missing,
            }, params=[_RECORD_ID])},
            "/api/v1/failed": {"get": _op("failed-task entries (reader)", {
                "200": _json(_list_of("FailedEntry"), "oldest last failure first"),
                "400": bad,
            }, params=_FILTER_PARAMS)},
            "/api/v1/failed/replay": {"post": _op("replay a snapshot (operator)", {
                "200": _json(_ref("ReplayResult"), "a dry run: nothing replayed"),
                "202": _json(_ref("ReplayResult"), "replayed through the normal path"),
                "400": bad, "413": _problem("the body is too large"),
            }, body={"required": True, "content": {
                "application/json": {"schema": _ref("ReplayRequest")}}})},
            "/api/v1/failed/{entry}": {"get": _op("one failed-task entry (reader)", {
                "200": _json(_ref("FailedEntryFull"), "the entry"), "404": missing,
            }, params=[_ENTRY])},
            "/api/v1/failed/{entry}/replay": {"post": _op("replay one entry (operator)", {
                "202": _json({"type": "object", "required": ["replayed"], "properties": {
                    "replayed": {"type": "array", "items": {"type": "string"}}}}, "sent"),
                "404": missing, "409": _problem("the entry cannot be replayed (why)"),
            }, params=[_ENTRY])},
            "/api/v1/failed/{entry}/discard": {"post": _op("discard one entry (operator)", {
                "200": _json({"type": "object", "required": ["discarded"], "properties": {
                    "discarded": {"type": "array", "items": {"type": "string"}}}},
                    "dropped, audited"),
                "400": bad, "404": missing, "413": _problem("the body is too large"),
            }, params=[_ENTRY], body={"required": True, "content": {"application/json": {
                "schema": {"type": "object", "required": ["reason"],
                           "additionalProperties": False,
                           "properties": {"reason": {"type": "string", "minLength": 1}}}}}})},
            "/api/v1/audit": {"get": _op("the operators' audit log (reader)", {
                "200": _json(_list_of("AuditLine"), "newest first"), "400": bad,
            }, params=[_LIMIT])},
            "/api/v1/health": {"get": _op("provisioning health --json (reader)", {
                "200": _json(_ref("Health"), "every check")})},
        },
    }
