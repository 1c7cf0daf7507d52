"""Every event type end to end: real Redis, real ``celery worker`` processes, the backend
emulator over HTTP. Events go in through ``worker.api.submit_events`` or as raw Celery
messages to ``provisioning.handle_event`` (SPEC §3); the record is read back from Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from statemachine import AutomatedCallingStatus, BackendStep, Result
from tests.factories import event, gatekeeper, new_id, provision
from tests.integration.workers import (
    MAX_TRIES,
    Cluster,
    applied_versions,
    dataverse,
    running_cluster,
)
from worker.emulators import Answer, Emulator

pytestmark = pytest.mark.integration

RUNNING, ERROR, DEPROVISIONED = 192350003, 192350004, 192350006
GATE_ACTIVE, GATE_INACTIVE = 715240000, 715240001
REASON_RUNNING, REASON_ERROR, REASON_DEPROVISIONED = 0, 1, 2
PHONE = "msdyn_phonenumberid"
PROVIDER = "msdyn_communicationprovidersettingid"


@pytest.fixture
def emulator() -> Emulator:
    return Emulator()


@pytest.fixture
def cluster(redis_url: str, tmp_path: Path, request: pytest.FixtureRequest,
            emulator: Emulator) -> Iterator[Cluster]:
    with running_cluster(redis_url, tmp_path, request, emulator=emulator) as running:
        running.start_worker(concurrency=2)
        yield running


def running_record(cluster: Cluster, *, kind: str = "whatsapp",
                   links: dict[str, str | None] | None = None) -> tuple[str, str]:
    """Provision a new record through submit and wait until it is Running."""
    record_id, channel_id = new_id(), new_id()
    report = cluster.submit([provision(record_id, channel_id, kind=kind, links=links)])
    assert report.ok and report.accepted == 1
    cluster.wait_status(record_id, "Running")
    return record_id, channel_id


def triggers(cluster: Cluster, record_id: str) -> list[tuple[str, str]]:
    return [(e.trigger, e.outcome.value) for e in cluster.history(record_id)]


def entries_of(cluster: Cluster, record_id: str, event_id: str) -> list[tuple[str, str]]:
    return [(e.trigger, e.outcome.value) for e in cluster.history(record_id)
            if e.event_id == event_id and not e.event_type.startswith("step.")]


def wait_entry(cluster: Cluster, record_id: str, event_id: str) -> list[tuple[str, str]]:
    return cluster.wait_for(lambda: entries_of(cluster, record_id, event_id),
                            f"a history entry of event {event_id}")


# -- happy paths -----------------------------------------------------------------------


def test_provision_requested_brings_a_new_record_to_running_with_its_gate_active(
    cluster: Cluster,
) -> None:
    record_id, channel_id, provider = new_id(), new_id(), new_id()
    request = provision(record_id, channel_id, name="Contoso WhatsApp",
                        links={PROVIDER: provider})

    cluster.send(request)  # a raw Celery message, as any Celery client may send
    record = cluster.wait_status(record_id, "Running")

    row = dataverse(record)
    assert row["statecode"] == 0
    assert row["statuscode"] == RUNNING
    assert row["statuscode@OData.Community.Display.V1.FormattedValue"] == "Running"
    assert (row["msdyn_gatekeeperstatus"], row["msdyn_gatekeeperstatusreason"]) == (
        GATE_ACTIVE, REASON_RUNNING)
    assert row["msdyn_exceptiondetails"] == ""
    assert row["msdyn_errormessage"] is None
    assert row["msdyn_provisioningresponse"] == (
        f"Provisioned whatsapp channel {channel_id} for record {record_id} (revision 1)")
    assert row["_msdyn_ocwhatsappchannelaccountid_value"] == channel_id
    assert row["_msdyn_communicationprovidersettingid_value"] == provider
    assert row["versionnumber"] == 3
    assert row["@odata.etag"] == 'W/"3"'
    assert triggers(cluster, record_id) == [
        ("create", "applied"), ("provision", "applied"), ("provisioned", "applied")]
    assert applied_versions(cluster.history(record_id)) == [1, 2, 3]
    calls = [(r["method"], r["path"], r["idempotency_key"], r["payload"])
             for r in cluster.requests()]
    assert calls == [
        ("PUT", f"/v1/channels/whatsapp/{channel_id}", f"{record_id}:2:provision_channel",
         {"record_id": record_id, "name": "Contoso WhatsApp", "links": {PROVIDER: provider}}),
        ("PUT", f"/v1/gates/{record_id}", f"{record_id}:2:activate_gate",
         {"status": "Active"}),
    ]


def test_deprovision_requested_ends_deprovisioned_with_statecode_inactive(
    cluster: Cluster, emulator: Emulator,
) -> None:
    record_id, channel_id = running_record(cluster, kind="teams")

    cluster.send(event("deprovision.requested", record_id))
    record = cluster.wait_status(record_id, "Deprovisioned")

    row = dataverse(record)
    assert (row["statecode"], row["statuscode"]) == (1, DEPROVISIONED)
    assert row["statecode@OData.Community.Display.V1.FormattedValue"] == "Inactive"
    assert (row["msdyn_gatekeeperstatus"], row["msdyn_gatekeeperstatusreason"]) == (
        GATE_INACTIVE, REASON_DEPROVISIONED)
    assert row["versionnumber"] == 5
    assert triggers(cluster, record_id)[3:] == [
        ("deprovision", "applied"), ("deprovisioned", "applied")]
    # Deprovision = gate deactivation, then provisioner DELETE (SPEC §4), keyed by version 4.
    calls = [(r["method"], r["path"], r["idempotency_key"]) for r in cluster.requests()][2:]
    assert calls == [
        ("PUT", f"/v1/gates/{record_id}", f"{record_id}:4:deactivate_gate"),
        ("DELETE", f"/v1/channels/teams/{channel_id}", f"{record_id}:4:deprovision_channel"),
    ]
    assert emulator.channels == {}
    assert emulator.gates[record_id].reason == "Deprovisioned"


def test_deprovisioned_record_rejects_a_later_provision_request(cluster: Cluster) -> None:
    record_id, channel_id = running_record(cluster)
    cluster.submit([event("deprovision.requested", record_id)])
    cluster.wait_status(record_id, "Deprovisioned")

    again = provision(record_id, channel_id)
    cluster.submit([again])

    assert wait_entry(cluster, record_id, again["id"]) == [("provision", "rejected")]
    record = cluster.record(record_id)
    assert record is not None and record.version == 5
    assert record.status.label == "Deprovisioned"


def test_gatekeeper_reported_error_moves_a_running_record_to_error_and_recovery_back(
    cluster: Cluster,
) -> None:
    record_id, _ = running_record(cluster)

    cluster.send(gatekeeper(record_id, "Inactive", "Error", "health probe failed"))
    failed = cluster.wait_status(record_id, "Error")

    row = dataverse(failed)
    assert row["statuscode"] == ERROR
    assert (row["msdyn_gatekeeperstatus"], row["msdyn_gatekeeperstatusreason"]) == (
        GATE_INACTIVE, REASON_ERROR)
    assert "health probe failed" in row["msdyn_exceptiondetails"]
    assert row["msdyn_errormessage"]

    cluster.send(gatekeeper(record_id, "Active", "Running"))
    recovered = cluster.wait_status(record_id, "Running")

    row = dataverse(recovered)
    assert (row["msdyn_gatekeeperstatus"], row["msdyn_gatekeeperstatusreason"]) == (
        GATE_ACTIVE, REASON_RUNNING)
    assert row["msdyn_exceptiondetails"] == ""
    assert row["msdyn_errormessage"] is None
    assert triggers(cluster, record_id)[3:] == [
        ("report_error", "applied"), ("recover", "applied")]
    assert applied_versions(cluster.history(record_id)) == [1, 2, 3, 4, 5]


def test_calling_test_goes_in_progress_then_success_with_the_emulators_test_id(
    cluster: Cluster, emulator: Emulator,
) -> None:
    phone = new_id()
    record_id, _ = running_record(cluster, kind="voice", links={PHONE: phone})

    cluster.send(event("calling_test.requested", record_id))

    def started() -> str | None:
        record = cluster.record(record_id)
        if record is None or record.calling_status is not AutomatedCallingStatus.IN_PROGRESS:
            return None
        return record.tracking.calling_test_id

    test_id = cluster.wait_for(started, "the calling test to start")
    assert list(emulator.calling_tests) == [test_id]
    assert emulator.calling_tests[test_id] == {"record_id": record_id, "phone_number_id": phone}
    in_progress = cluster.record(record_id)
    assert in_progress is not None
    assert dataverse(in_progress)["msdyn_automatedcallingstatus"] == 3

    cluster.send(event("calling_test.completed", record_id,
                       {"result": "Success", "test_id": test_id,
                        "details": "inbound and outbound calls connected"}))

    done = cluster.wait_for(
        lambda: (r := cluster.record(record_id)) is not None
        and r.calling_status is AutomatedCallingStatus.SUCCESS and r, "calling test Success")
    row = dataverse(done)
    assert row["msdyn_automatedcallingstatus"] == 1
    assert row["msdyn_automatedcallingstatus@OData.Community.Display.V1.FormattedValue"] == (
        "Success")
    assert row["statuscode"] == RUNNING
    assert triggers(cluster, record_id)[3:] == [
        ("request_test", "applied"), ("test_started", "applied"), ("test_passed", "applied")]
    started_entry = cluster.history(record_id)[4]
    assert test_id in started_entry.reason
    posts = [r for r in cluster.requests() if r["step"] == "start_calling_test"]
    assert [(r["method"], r["path"], r["idempotency_key"]) for r in posts] == [
        ("POST", "/v1/calling-tests", f"{record_id}:4:start_calling_test")]


def test_parent_deleted_cascade_deletes_the_record_and_history_keeps_the_delete(
    cluster: Cluster,
) -> None:
    record_id, channel_id = running_record(cluster)
    bystander, _ = running_record(cluster)

    cluster.send(event("parent.deleted", None,
                       {"table": "msdyn_ocwhatsappchannelaccount", "id": channel_id}))
    cluster.wait_for(lambda: cluster.record(record_id) is None, "the cascade delete")

    listed = {r.id for r in cluster.service.store.list_records()}
    assert record_id not in listed
    assert bystander in listed
    history = cluster.history(record_id)
    assert (history[-1].trigger, history[-1].outcome, history[-1].version) == (
        "delete", Result.APPLIED, 4)
    assert history[-1].after is None
    shown = cluster.provisioning("show", record_id)
    assert shown.returncode == 1, shown.stderr
    assert record_id in shown.stderr
    assert "Traceback" not in shown.stderr
    printed = cluster.provisioning("history", record_id, "--json")
    assert printed.returncode == 0, printed.stderr
    entries = json.loads(printed.stdout)
    assert [e["trigger"] for e in entries] == ["create", "provision", "provisioned", "delete"]
    assert entries[-1]["event_type"] == "parent.deleted"
    bystander_record = cluster.record(bystander)
    assert bystander_record is not None and bystander_record.version == 3


def test_parent_deleted_remove_link_nulls_the_lookup_and_keeps_the_record(
    cluster: Cluster,
) -> None:
    provider = new_id()
    record_id, channel_id = running_record(cluster, links={PROVIDER: provider})

    cluster.submit([event("parent.deleted", None,
                          {"table": "msdyn_occommunicationprovidersetting", "id": provider})])
    record = cluster.wait_for(
        lambda: (r := cluster.record(record_id)) is not None and r.version == 4 and r,
        "the RemoveLink change")

    row = dataverse(record)
    assert row["_msdyn_communicationprovidersettingid_value"] is None
    assert row["_msdyn_ocwhatsappchannelaccountid_value"] == channel_id
    assert row["statuscode"] == RUNNING
    assert triggers(cluster, record_id)[-1] == ("remove_link", "applied")


# -- duplicates and out-of-order -------------------------------------------------------


def test_an_event_delivered_three_times_is_applied_once(cluster: Cluster) -> None:
    record_id, channel_id = new_id(), new_id()
    request = provision(record_id, channel_id)

    cluster.send(request)
    cluster.send(request)
    report = cluster.submit([request])
    cluster.wait_status(record_id, "Running")
    error = gatekeeper(record_id, "Inactive", "Error", "probe")
    for _ in range(3):
        cluster.send(error)
    cluster.wait_status(record_id, "Error")
    marker = gatekeeper(record_id, "Active", "Running")
    cluster.send(marker)  # queued after every copy: once it is applied, all copies are in
    wait_entry(cluster, record_id, marker["id"])

    assert report.accepted + report.duplicates == 1
    assert entries_of(cluster, record_id, request["id"]) == [
        ("create", "applied"), ("provision", "applied")]
    assert entries_of(cluster, record_id, error["id"]) == [("report_error", "applied")]
    assert applied_versions(cluster.history(record_id)) == [1, 2, 3, 4, 5]
    provisions = [r for r in cluster.requests() if r["step"] == "provision_channel"]
    assert len(provisions) == 1


def test_calling_test_completed_for_another_test_is_recorded_stale(cluster: Cluster) -> None:
    record_id, _ = running_record(cluster, kind="voice", links={PHONE: new_id()})
    cluster.submit([event("calling_test.requested", record_id)])
    test_id = cluster.wait_for(
        lambda: (r := cluster.record(record_id)) is not None and r.tracking.calling_test_id,
        "the calling test to start")

    late = event("calling_test.completed", record_id,
                 {"result": "Failure", "test_id": new_id(), "details": "an older test"})
    cluster.send(late)

    assert wait_entry(cluster, record_id, late["id"]) == [("test_failed", "stale")]
    record = cluster.record(record_id)
    assert record is not None
    assert record.calling_status is AutomatedCallingStatus.IN_PROGRESS
    assert record.tracking.calling_test_id == test_id
    assert record.version == 5


def test_calling_test_completed_with_no_test_in_progress_is_rejected(cluster: Cluster) -> None:
    record_id, _ = running_record(cluster, kind="voice", links={PHONE: new_id()})

    stray = event("calling_test.completed", record_id, {"result": "Success"})
    cluster.send(stray)

    assert wait_entry(cluster, record_id, stray["id"]) == [("test_passed", "rejected")]
    record = cluster.record(record_id)
    assert record is not None and record.version == 3


@pytest.fixture
def slow_provisioner(emulator: Emulator) -> Emulator:
    """Every provisioner PUT is answered 503 (Retry-After: 1) twice, then normally: the
    record stays Processing for about two seconds."""
    busy = Answer(503, {"error": "busy"}, {"Retry-After": "1"})
    emulator.script("*", BackendStep.PROVISION_CHANNEL, [busy, busy])
    return emulator


def test_provision_requested_while_processing_is_ignored(
    slow_provisioner: Emulator, cluster: Cluster,
) -> None:
    record_id, channel_id = new_id(), new_id()
    first = provision(record_id, channel_id)
    cluster.submit([first])
    cluster.wait_status(record_id, "Processing", timeout=10)

    second = provision(record_id, channel_id)
    cluster.submit([second])  # accepted while the record is Processing
    cluster.wait_status(record_id, "Running")
    entries = wait_entry(cluster, record_id, second["id"])

    assert entries == [("provision", "ignored")]
    assert len([r for r in cluster.requests() if r["step"] == "provision_channel"
                and r["status"] < 300]) == 1


def test_a_provisioning_success_after_a_deprovision_request_is_stale(
    slow_provisioner: Emulator, cluster: Cluster,
) -> None:
    record_id, channel_id = new_id(), new_id()
    cluster.submit([provision(record_id, channel_id)])
    cluster.wait_status(record_id, "Processing", timeout=10)

    cluster.submit([event("deprovision.requested", record_id)])  # while Processing
    cluster.wait_status(record_id, "Deprovisioned")

    history = cluster.history(record_id)
    deprovision = next(e for e in history if e.trigger == "deprovision")
    assert deprovision.before is not None
    assert deprovision.before.status.label == "Processing"
    outcomes = [(e.trigger, e.outcome.value) for e in history]
    assert ("provisioned", "stale") in outcomes
    assert ("provisioned", "applied") not in outcomes


# -- backend failures ------------------------------------------------------------------


def test_transient_backend_failures_end_in_error_then_a_beat_retry_brings_running(
    cluster: Cluster, emulator: Emulator,
) -> None:
    record_id, channel_id = new_id(), new_id()
    emulator.script(channel_id, BackendStep.PROVISION_CHANNEL, [503] * MAX_TRIES)

    cluster.submit([provision(record_id, channel_id)])
    failed = cluster.wait_status(record_id, "Error")

    assert "provision_channel" in failed.exception_details
    assert "503" in failed.exception_details
    assert failed.gatekeeper == (None, None)
    cluster.start_beat()
    recovered = cluster.wait_status(record_id, "Running")

    assert recovered.exception_details == ""
    assert recovered.error_message is None
    assert triggers(cluster, record_id) == [
        ("create", "applied"), ("provision", "applied"), ("fail", "applied"),
        ("retry", "applied"), ("provisioned", "applied")]
    keys = [(r["status"], r["idempotency_key"]) for r in cluster.requests()
            if r["step"] == "provision_channel"]
    # The in-task tries share one key; beat's retry is a new version, so a new key.
    assert keys == [(503, f"{record_id}:2:provision_channel")] * MAX_TRIES + [
        (201, f"{record_id}:4:provision_channel")]


def test_in_task_retries_of_a_step_carry_one_idempotency_key(
    cluster: Cluster, emulator: Emulator,
) -> None:
    record_id, channel_id = new_id(), new_id()
    emulator.script(record_id, BackendStep.ACTIVATE_GATE,
                    [503, Answer(429, None, {"Retry-After": "0"})])  # then the normal 200

    cluster.submit([provision(record_id, channel_id)])
    cluster.wait_status(record_id, "Running")

    gate = [(r["status"], r["idempotency_key"]) for r in cluster.requests()
            if r["step"] == "activate_gate"]
    key = f"{record_id}:2:activate_gate"
    assert gate == [(503, key), (429, key), (200, key)]


def test_permanent_failure_records_the_step_and_status_and_a_one_line_error(
    cluster: Cluster, emulator: Emulator,
) -> None:
    record_id, channel_id = new_id(), new_id()
    emulator.fail_permanently(channel_id, BackendStep.PROVISION_CHANNEL, 400,
                              {"error": "LINE channel secret was rejected"})

    cluster.submit([provision(record_id, channel_id, kind="line")])
    record = cluster.wait_status(record_id, "Error")

    row = dataverse(record)
    assert (row["statecode"], row["statuscode"]) == (0, ERROR)
    details = row["msdyn_exceptiondetails"]
    assert "provision_channel" in details
    assert "400" in details
    assert "LINE channel secret was rejected" in details
    message = row["msdyn_errormessage"]
    assert message and "\n" not in message
    assert "provision_channel" in message and "400" in message
    assert (row["msdyn_gatekeeperstatus"], row["msdyn_gatekeeperstatusreason"]) == (None, None)
    steps = [(r["step"], r["status"]) for r in cluster.requests()]
    assert steps == [("provision_channel", 400)]  # permanent: no in-task retry, no gate call


def test_a_2xx_answer_with_the_wrong_body_is_a_permanent_failure_of_that_step(
    cluster: Cluster, emulator: Emulator,
) -> None:
    record_id, channel_id = new_id(), new_id()
    emulator.fail_permanently(record_id, BackendStep.ACTIVATE_GATE, 200,
                              {"status": "Inactive", "reason": "Error"})

    cluster.submit([provision(record_id, channel_id)])
    record = cluster.wait_status(record_id, "Error")

    assert "activate_gate" in record.exception_details
    assert record.error_message is not None and "activate_gate" in record.error_message
    assert dataverse(record)["msdyn_gatekeeperstatus"] == GATE_INACTIVE
    assert dataverse(record)["msdyn_gatekeeperstatusreason"] == REASON_ERROR
    assert [r["step"] for r in cluster.requests()] == ["provision_channel", "activate_gate"]
