"""The Dataverse emulator answers as the Web API and the token endpoint do (in process)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from statemachine import ENTITY_SET, PRIMARY_KEY, StatusReason
from tests.factories import new_id
from tests.unit.test_dataverse_support import CLIENT, SECRET, TENANT, Clock
from worker.emulators import DataverseEmulator, Emulator, Fault

FORMATTED = "@OData.Community.Display.V1.FormattedValue"
WHATSAPP_BIND = "msdyn_ocwhatsappchannelaccountId@odata.bind"


class Org:
    """An httpx client on the emulator's transport, signed in."""

    def __init__(self, clock: Clock, **options: Any) -> None:
        self.clock = clock
        self.dataverse = DataverseEmulator(tenant_id=TENANT, client_id=CLIENT,
                                           client_secret=SECRET, clock=clock, **options)
        self.backends = Emulator(dataverse=self.dataverse)
        self.http = httpx.Client(transport=self.backends.transport(),
                                 base_url="https://org.test")
        self.token = self.sign_in().json()["access_token"]

    def sign_in(self, **form: str) -> httpx.Response:
        data = {"grant_type": "client_credentials", "client_id": CLIENT,
                "client_secret": SECRET, "scope": "https://org.test/.default", **form}
        return self.http.post(f"/{form.pop('tenant', TENANT)}/oauth2/v2.0/token", data=data)

    def api(self, method: str, path: str = "", *, token: str | None = None,
            **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token}",
                   **kwargs.pop("headers", {})}
        return self.http.request(method, f"/api/data/v9.2/{ENTITY_SET}{path}",
                                 headers=headers, **kwargs)

    def create(self, **body: Any) -> str:
        record_id = body.pop("id", new_id())
        reply = self.api("POST", json={PRIMARY_KEY: record_id, "msdyn_name": "Contoso",
                                       **body})
        assert reply.status_code == 204, reply.text
        return str(record_id)


@pytest.fixture
def org() -> Org:
    return Org(Clock())


def error_of(reply: httpx.Response) -> tuple[str, str]:
    error = reply.json()["error"]
    return error["code"], error["message"]


def test_the_token_endpoint_issues_bearer_tokens_for_a_default_scope(org: Org) -> None:
    reply = org.sign_in()
    assert reply.status_code == 200
    body = reply.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3599
    assert org.dataverse.tokens_issued == 2


@pytest.mark.parametrize(("form", "status", "error", "aadsts"), [
    ({"client_secret": "wrong"}, 401, "invalid_client", "AADSTS7000215"),
    ({"client_id": "someone-else"}, 400, "unauthorized_client", "AADSTS700016"),
    ({"scope": "https://org.test/user_impersonation"}, 400, "invalid_scope", "AADSTS1002012"),
    ({"grant_type": "password"}, 400, "unsupported_grant_type", "AADSTS70003"),
    ({"tenant": "other-tenant"}, 400, "invalid_request", "AADSTS90002"),
])
def test_the_token_endpoint_refuses_in_the_identity_platform_error_shape(
        org: Org, form: dict[str, str], status: int, error: str, aadsts: str) -> None:
    reply = org.sign_in(**form)
    assert reply.status_code == status
    assert reply.json()["error"] == error
    assert reply.json()["error_description"].startswith(aadsts)


def test_every_api_request_needs_a_live_token(org: Org) -> None:
    assert org.api("GET", token="forged").status_code == 401
    assert org.api("GET").status_code == 200
    org.clock.advance(3600)
    expired = org.api("GET")
    assert expired.status_code == 401
    assert "invalid_token" in expired.headers["WWW-Authenticate"]
    org.token = org.sign_in().json()["access_token"]
    assert org.api("GET").status_code == 200
    org.dataverse.revoke_tokens()
    assert org.api("GET").status_code == 401


def test_a_created_row_has_a_weak_etag_from_the_organizations_counter(org: Org) -> None:
    first, second = org.create(), org.create()
    one, two = org.api("GET", f"({first})").json(), org.api("GET", f"({second})").json()
    assert one["@odata.etag"] == f'W/"{one["versionnumber"]}"'
    assert two["versionnumber"] == one["versionnumber"] + 1
    assert one["statecode"] == 0
    assert one["statuscode"] == StatusReason.DRAFT
    assert one["msdyn_automatedcallingstatus"] == 0


def test_create_with_representation_answers_201_with_the_selected_row(org: Org) -> None:
    record_id = new_id()
    reply = org.api("POST", params={"$select": "versionnumber"},
                    headers={"Prefer": "return=representation"},
                    json={PRIMARY_KEY: record_id, "msdyn_name": "Contoso"})
    assert reply.status_code == 201
    assert set(reply.json()) == {"@odata.etag", PRIMARY_KEY, "versionnumber"}
    assert reply.headers["OData-EntityId"].endswith(f"{ENTITY_SET}({record_id})")


def test_statecode_cannot_be_set_on_create(org: Org) -> None:
    reply = org.api("POST", json={"msdyn_name": "x", "statecode": 1,
                                  "statuscode": int(StatusReason.DEPROVISIONED)})
    assert reply.status_code == 400
    code, message = error_of(reply)
    assert code == "0x80040203"
    assert "statecode cannot be set on create" in message
    inactive = org.api("POST", json={"msdyn_name": "x",
                                     "statuscode": int(StatusReason.DEPROVISIONED)})
    assert inactive.status_code == 400


def test_statecode_and_statuscode_must_agree(org: Org) -> None:
    record_id = org.create()
    alone = org.api("PATCH", f"({record_id})", headers={"If-Match": "*"},
                    json={"statuscode": int(StatusReason.DEPROVISIONED)})
    assert alone.status_code == 400
    together = org.api("PATCH", f"({record_id})", headers={"If-Match": "*"},
                       json={"statecode": 1, "statuscode": int(StatusReason.DEPROVISIONED)})
    assert together.status_code == 204
    assert org.dataverse.row(record_id)["statecode"] == 1  # type: ignore[index]


def test_a_stale_if_match_is_a_412_and_changes_nothing(org: Org) -> None:
    record_id = org.create()
    etag = org.api("GET", f"({record_id})").json()["@odata.etag"]
    org.dataverse.edit(record_id, {"msdyn_name": "Changed in Dynamics"})
    reply = org.api("PATCH", f"({record_id})", headers={"If-Match": etag},
                    json={"msdyn_name": "Ours"})
    assert reply.status_code == 412
    assert error_of(reply)[0] == "0x80060882"
    assert org.dataverse.row(record_id)["msdyn_name"] == "Changed in Dynamics"  # type: ignore[index]


def test_a_patch_with_the_current_etag_applies_and_returns_the_new_one(org: Org) -> None:
    record_id = org.create()
    etag = org.api("GET", f"({record_id})").json()["@odata.etag"]
    reply = org.api("PATCH", f"({record_id})", params={"$select": "versionnumber"},
                    headers={"If-Match": etag, "Prefer": "return=representation"},
                    json={"msdyn_name": "Renamed"})
    assert reply.status_code == 200
    assert reply.json()["@odata.etag"] != etag
    assert reply.json()["@odata.etag"] == reply.headers["ETag"]


def test_if_match_on_a_missing_row_is_404_and_without_it_a_patch_upserts(org: Org) -> None:
    record_id = new_id()
    missing = org.api("PATCH", f"({record_id})", headers={"If-Match": "*"},
                      json={"msdyn_name": "x"})
    assert missing.status_code == 404
    assert error_of(missing)[0] == "0x80040217"
    assert org.api("PATCH", f"({record_id})", json={"msdyn_name": "x"}).status_code == 204
    only_new = org.api("PATCH", f"({record_id})", headers={"If-None-Match": "*"},
                       json={"msdyn_name": "y"})
    assert only_new.status_code == 412


def test_creating_an_id_that_exists_is_a_412_duplicate_key(org: Org) -> None:
    record_id = org.create()
    reply = org.api("POST", json={PRIMARY_KEY: record_id, "msdyn_name": "again"})
    assert reply.status_code == 412
    assert error_of(reply) == ("0x80040237", "Cannot insert duplicate key.")


def test_lookups_bind_only_through_the_case_sensitive_navigation_property(org: Org) -> None:
    account = new_id()
    wrong_case = org.api("POST", json={"msdyn_name": "x", WHATSAPP_BIND.lower():
                                       f"/msdyn_ocwhatsappchannelaccounts({account})"})
    assert wrong_case.status_code == 400
    assert "undeclared property 'msdyn_ocwhatsappchannelaccountid'" in error_of(wrong_case)[1]
    wrong_set = org.api("POST", json={"msdyn_name": "x",
                                      WHATSAPP_BIND: f"/msdyn_ocfbpages({account})"})
    assert wrong_set.status_code == 400
    by_value = org.api("POST", json={"msdyn_name": "x",
                                     "_msdyn_ocwhatsappchannelaccountid_value": account})
    assert by_value.status_code == 400
    record_id = org.create(**{WHATSAPP_BIND: f"/msdyn_ocwhatsappchannelaccounts({account})"})
    row = org.dataverse.row(record_id)
    assert row is not None
    assert row["_msdyn_ocwhatsappchannelaccountid_value"] == account
    cleared = org.api("PATCH", f"({record_id})", headers={"If-Match": "*"},
                      json={WHATSAPP_BIND: None})
    assert cleared.status_code == 204
    assert org.dataverse.row(record_id)["_msdyn_ocwhatsappchannelaccountid_value"] is None  # type: ignore[index]


def test_values_are_checked_and_empty_text_is_stored_as_null(org: Org) -> None:
    bad_choice = org.api("POST", json={"msdyn_name": "x", "msdyn_gatekeeperstatus": 7})
    assert bad_choice.status_code == 400
    assert error_of(bad_choice)[0] == "0x8004431a"
    too_long = org.api("POST", json={"msdyn_name": "x" * 101})
    assert error_of(too_long)[0] == "0x80044331"
    unknown = org.api("POST", json={"msdyn_name": "x", "versionnumber": 7})
    assert unknown.status_code == 400
    record_id = org.create(msdyn_exceptiondetails="")
    assert org.dataverse.row(record_id)["msdyn_exceptiondetails"] is None  # type: ignore[index]


def test_formatted_values_come_only_when_asked_for(org: Org) -> None:
    record_id = org.create()
    plain = org.api("GET", f"({record_id})").json()
    assert not any(FORMATTED in key for key in plain)
    annotated = org.api("GET", f"({record_id})", headers={
        "Prefer": 'odata.include-annotations="OData.Community.Display.V1.FormattedValue"'})
    assert annotated.json()[f"statuscode{FORMATTED}"] == "Draft"


def test_select_limits_the_properties_and_refuses_unknown_ones(org: Org) -> None:
    record_id = org.create()
    reply = org.api("GET", f"({record_id})", params={"$select": "msdyn_name"})
    assert set(reply.json()) == {"@odata.etag", PRIMARY_KEY, "msdyn_name"}
    assert org.api("GET", f"({record_id})", params={"$select": "nope"}).status_code == 400


def test_the_collection_pages_with_maxpagesize_and_next_links(org: Org) -> None:
    created = [org.create() for _ in range(5)]
    seen: list[str] = []
    link: str | None = f"/api/data/v9.2/{ENTITY_SET}?$select=msdyn_name"
    pages = 0
    while link:
        reply = org.http.get(link, headers={"Authorization": f"Bearer {org.token}",
                                            "Prefer": "odata.maxpagesize=2"})
        assert reply.status_code == 200
        assert reply.headers["Preference-Applied"] == "odata.maxpagesize=2"
        body = reply.json()
        seen += [row[PRIMARY_KEY] for row in body["value"]]
        link = body.get("@odata.nextLink")
        pages += 1
    assert pages == 3
    assert sorted(seen) == sorted(created)
    assert org.api("GET", params={"$filter": "statecode eq 0"}).status_code == 400


def test_past_its_budget_a_client_gets_429_with_retry_after_until_the_window_ends() -> None:
    org = Org(Clock(), request_budget=2, window_seconds=60)
    assert [org.api("GET").status_code for _ in range(2)] == [200, 200]
    throttled = org.api("GET")
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "60"
    assert error_of(throttled)[0] == "0x80072322"
    org.clock.advance(59)
    assert org.api("GET").headers["Retry-After"] == "1"
    org.clock.advance(1)
    assert org.api("GET").status_code == 200


def test_more_requests_at_once_than_allowed_get_429() -> None:
    org = Org(Clock(), max_concurrent=0)
    reply = org.api("GET")
    assert reply.status_code == 429
    assert error_of(reply)[0] == "0x80072326"


def test_an_outage_and_scripted_faults_answer_in_the_error_shape(org: Org) -> None:
    org.dataverse.start_outage(503)
    assert org.api("GET").status_code == 503
    assert org.sign_in().status_code == 200  # the identity platform is elsewhere
    org.dataverse.end_outage()
    org.dataverse.fail_next(Fault(400, "0x80040220", "missing privilege"))
    reply = org.api("GET")
    assert (reply.status_code, *error_of(reply)) == (400, "0x80040220", "missing privilege")
    assert org.api("GET").status_code == 200


def test_delete_removes_the_row_and_a_second_delete_is_404(org: Org) -> None:
    record_id = org.create()
    assert org.api("DELETE", f"({record_id})").status_code == 204
    again = org.api("DELETE", f"({record_id})")
    assert again.status_code == 404
    assert f"With Id = {record_id} Does Not Exist" in error_of(again)[1]


def test_unknown_paths_and_methods_answer_in_the_error_shape(org: Org) -> None:
    other = org.http.get("/api/data/v9.2/accounts",
                         headers={"Authorization": f"Bearer {org.token}"})
    assert other.status_code == 404
    assert error_of(other)[0] == "0x8006088a"
    assert org.api("PUT").status_code == 405
    assert org.api("GET", "(not-a-guid)").status_code == 400


def test_the_admin_api_seeds_edits_lists_and_throttles(org: Org) -> None:
    record_id = new_id()
    seeded = org.http.post("/_dataverse/rows", json=[{PRIMARY_KEY: record_id,
                                                      "msdyn_name": "Seeded"}])
    assert seeded.status_code == 200
    edited = org.http.post("/_dataverse/edit", json={"id": record_id,
                                                     "changes": {"msdyn_name": "Edited"}})
    assert edited.json()["etag"] != seeded.json()["etags"][0]
    rows = org.http.get("/_dataverse/rows").json()
    assert [row["msdyn_name"] for row in rows] == ["Edited"]
    assert org.http.post("/_dataverse/budget", json={"requests": 0}).status_code == 200
    assert org.api("GET").status_code == 429
    assert org.http.post("/_dataverse/outage", json={"status": 500}).status_code == 200
    assert org.http.delete("/_dataverse/outage").status_code == 200
    assert org.http.post("/_dataverse/budget", json={"requests": None}).status_code == 200
    assert org.api("GET").status_code == 200
    calls = org.http.get("/_dataverse/requests").json()
    assert calls[-1]["method"] == "GET"
    assert org.http.post("/_dataverse/revoke-tokens").status_code == 200
    assert org.api("GET").status_code == 401
    assert org.http.post("/_dataverse/edit", json=[]).status_code == 400
    assert org.http.get("/_dataverse/nothing").status_code == 404
    assert org.http.post("/_dataverse/reset").status_code == 200
    assert org.dataverse.rows() == {}


def test_the_emulator_is_configured_from_the_environment() -> None:
    emulated = DataverseEmulator.from_env({"EMULATOR_DATAVERSE_BUDGET": "10",
                                           "EMULATOR_DATAVERSE_TOKEN_SECONDS": "5",
                                           "EMULATOR_DATAVERSE_CLIENT_ID": "app"})
    assert (emulated.request_budget, emulated.token_seconds, emulated.client_id) == (
        10, 5.0, "app")
    with pytest.raises(ValueError, match="EMULATOR_DATAVERSE_BUDGET"):
        DataverseEmulator.from_env({"EMULATOR_DATAVERSE_BUDGET": "many"})


def test_the_backend_emulator_hands_only_dataverse_paths_over() -> None:
    assert DataverseEmulator.owns("/api/data/v9.2/msdyn_ocprovisioningstates")
    assert DataverseEmulator.owns("/tenant/oauth2/v2.0/token")
    assert not DataverseEmulator.owns("/v1/gates/abc")
    backends = Emulator()
    backends.dataverse.seed([{PRIMARY_KEY: new_id(), "msdyn_name": "x"}])
    backends.reset()
    assert backends.dataverse.rows() == {}
