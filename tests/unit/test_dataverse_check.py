"""``provisioning dataverse check`` against the emulator's metadata: a clean organization,
planted differences (blocking and not), and import, run and the mirror task refusing to
start on a blocking one."""

from __future__ import annotations

import json
from typing import Any

import pytest

from statemachine import PRIMARY_KEY
from tests.factories import new_id
from tests.unit.test_dataverse_support import Rig, dataverse_cli, make_rig, provision
from worker.dataverse import startup as runtime
from worker.dataverse.metadata import ENTITY_PATH, OrgMetadata, check_organization, compare


@pytest.fixture
def rig() -> Rig:
    return make_rig()


@pytest.fixture
def run(rig: Rig, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> Any:
    return dataverse_cli(rig, monkeypatch, capsys)


def test_a_clean_organization_checks_clean(run: Any, rig: Rig) -> None:
    code, out, err = run("check")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "organization  https://contoso-sandbox.crm4.dynamics.com"
    assert lines[1] == "signed in     with secret credentials"
    assert lines[2].startswith("WhoAmI        user ")
    assert lines[-1] == "result        ok (0 notes)"
    paths = [c.path.rsplit("/v9.2/", 1)[1] for c in rig.api_calls()]
    assert paths[:2] == ["WhoAmI", ENTITY_PATH]
    assert f"{ENTITY_PATH}/ManyToOneRelationships" in paths


def test_a_missing_choice_value_and_a_shorter_max_length_block(run: Any, rig: Rig) -> None:
    rig.dataverse.schema.plant({"column": "msdyn_automatedcallingstatus", "drop_option": 3})
    rig.dataverse.schema.plant({"column": "msdyn_name", "max_length": 80})
    code, out, _ = run("check")
    assert code == 1
    blocking = [line for line in out.splitlines() if line.startswith("BLOCKING")]
    assert blocking == [
        "BLOCKING      msdyn_automatedcallingstatus: value 3 (InProgress) is not an option "
        "in the organization: writing it would be refused",
        "BLOCKING      msdyn_name: max length 80 in the organization, 100 in code: longer "
        "text would be refused (0x80044331)",
    ]
    assert out.splitlines()[-1].startswith("result        2 blocking, 0 notes")


def test_differences_that_cannot_fail_a_write_are_notes(run: Any, rig: Rig) -> None:
    rig.dataverse.schema.plant({"column": "statuscode", "add_option": {
        "value": 192350007, "label": "Paused", "state": 0}})
    rig.dataverse.schema.plant({"column": "msdyn_provisioningresponse", "max_length": 4000})
    code, out, _ = run("check", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["ok"] is True
    assert {(d["column"], d["blocking"]) for d in report["differences"]} == {
        ("statuscode", False), ("msdyn_provisioningresponse", False)}
    assert report["whoami"]["OrganizationId"]


@pytest.mark.parametrize(("change", "column", "words"), [
    ({"column": "msdyn_ocwhatsappchannelaccountid",
      "navigation_property": "msdyn_ocwhatsappchannelaccountid"},
     "msdyn_ocwhatsappchannelaccountid", "case-sensitive"),
    ({"column": "msdyn_errormessage", "remove": True}, "msdyn_errormessage", "does not exist"),
    ({"column": "statuscode", "add_option": {"value": 192350001, "label": "Draft",
                                             "state": 1}}, "statuscode", "belongs to state"),
    ({"table": "missing"}, "msdyn_ocprovisioningstate", "does not exist"),
    ({"parent": "msdyn_ocfbpage", "entity_set": "msdyn_ocfacebookpages"}, "msdyn_ocfbpageid",
     "the parent's entity set is 'msdyn_ocfacebookpages' in the organization"),
    ({"parent": "msdyn_ocphonenumber", "entity_set": None}, "msdyn_phonenumberid",
     "the parent table msdyn_ocphonenumber does not exist"),
])
def test_each_blocking_difference_is_named(rig: Rig, change: dict[str, Any], column: str,
                                           words: str) -> None:
    if column == "statuscode":  # the organization's Draft sits in state 1
        options = rig.dataverse.schema.attributes["statuscode"]["OptionSet"]["Options"]
        options[:] = [o for o in options if o["Value"] != 192350001]
    rig.dataverse.schema.plant(change)
    report = check_organization(rig.mirror.client)
    assert not report.ok
    assert [d.column for d in report.blocking] == [column]
    assert words in report.blocking[0].message


def test_text_and_memo_are_interchangeable_and_other_types_are_not() -> None:
    from worker.emulators.dataverse_metadata import EmulatedSchema

    schema = EmulatedSchema()
    entity = schema.answer("GET", ENTITY_PATH, "c")
    assert entity is not None
    attributes = entity[1]["Attributes"]
    for attribute in attributes:
        if attribute["LogicalName"] == "msdyn_errormessage":
            attribute["AttributeType"] = "String"
        if attribute["LogicalName"] == "versionnumber":
            attribute["AttributeType"] = "Integer"
    differences = compare(OrgMetadata(entity[1]))
    assert {(d.column, d.blocking) for d in differences
            if d.column in ("msdyn_errormessage", "versionnumber")} == {
        ("msdyn_errormessage", False), ("versionnumber", True)}


def test_import_refuses_to_start_on_a_blocking_difference(run: Any, rig: Rig) -> None:
    rig.dataverse.seed([{PRIMARY_KEY: new_id(), "msdyn_name": "Existing"}])
    rig.dataverse.schema.plant({"column": "msdyn_name", "max_length": 50})
    code, out, err = run("import")
    assert (code, out) == (1, "")
    assert err.splitlines()[0].startswith("BLOCKING  msdyn_name: max length 50")
    assert err.splitlines()[-1].startswith("provisioning: dataverse: 1 blocking difference(s)")
    assert rig.store.list_records() == []
    code, _, _ = run("run", "--once")
    assert code == 1
    rig.dataverse.schema.reset()
    code, out, _ = run("import")
    assert code == 0
    assert out.startswith("imported 1")


def test_the_mirror_task_checks_before_its_first_run_and_again_after_a_pause(
        rig: Rig) -> None:
    runtime.reset()
    rig.dataverse.schema.plant({"column": "msdyn_gatekeeperstatus", "drop_option": 715240001})
    rig.submit(provision(new_id()))
    refused = runtime.first_start(rig.mirror, clock=rig.clock)
    assert refused is not None
    assert refused["mirror"] == "refused"
    assert refused["blocking"] == ["msdyn_gatekeeperstatus: value 715240001 (Inactive) is not "
                                   "an option in the organization: writing it would be refused"]
    error = json.loads(rig.mirror.state.status()["last_error"])
    assert error["code"] == "schema_mismatch"
    assert rig.api_calls("POST") == []  # nothing sent
    calls = len(rig.dataverse.calls)
    assert runtime.first_start(rig.mirror, clock=rig.clock) == {
        "mirror": "not started",
        "reason": "waiting to check the organization's metadata again"}
    assert len(rig.dataverse.calls) == calls  # no new check before the pause ends
    rig.dataverse.schema.reset()  # the administrator imports the newer solution
    rig.clock.advance(rig.mirror.settings.backoff_cap)
    assert runtime.first_start(rig.mirror, clock=rig.clock) is None
    calls = len(rig.dataverse.calls)
    assert runtime.first_start(rig.mirror, clock=rig.clock) is None
    assert len(rig.dataverse.calls) == calls  # checked once per process
    assert rig.run().stopped == "empty"
    runtime.reset()


def test_an_unreachable_organization_does_not_start_the_mirror(rig: Rig) -> None:
    runtime.reset()
    rig.dataverse.start_outage(503)
    outcome = runtime.first_start(rig.mirror, clock=rig.clock)
    assert outcome is not None
    assert outcome["mirror"] == "not started"
    assert "0x80040216" in outcome["reason"]
    runtime.reset()
