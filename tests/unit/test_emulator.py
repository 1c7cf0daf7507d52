"""The backend emulator in-process: state, scripts, idempotency, failure injection."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from statemachine.effects import BackendStep
from worker.emulators import Answer, Emulator, GateState, main

RECORD = "rec-1"
CHANNEL = "chan-1"
CHANNEL_PATH = f"/v1/channels/whatsapp/{CHANNEL}"
GATE_PATH = f"/v1/gates/{RECORD}"
PROVISION_BODY = {"record_id": RECORD, "name": "Contoso", "links": {}}
ACTIVE = {"status": "Active"}
DEPROVISIONED = {"status": "Inactive", "reason": "Deprovisioned"}
TEST_BODY = {"record_id": RECORD, "phone_number_id": "phone-1"}


@pytest.fixture
def emulator() -> Emulator:
    return Emulator()


@pytest.fixture
def client(emulator: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(transport=emulator.transport(), base_url="http://emulator.local") as c:
        yield c


def provision(client: httpx.Client, key: str | None = None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return client.put(CHANNEL_PATH, json=PROVISION_BODY, headers=headers)


# -- state -----------------------------------------------------------------------------


def test_provisioning_creates_then_updates_a_channel(
    client: httpx.Client, emulator: Emulator
) -> None:
    first = provision(client)
    second = provision(client)

    assert first.status_code == 201
    assert second.status_code == 200
    assert "revision 1" in first.json()["response"]
    assert "revision 2" in second.json()["response"]
    assert emulator.channels[("whatsapp", CHANNEL)]["record_id"] == RECORD


def test_deprovisioning_removes_a_channel_and_an_unknown_one_is_404(
    client: httpx.Client, emulator: Emulator
) -> None:
    provision(client)

    assert client.delete(CHANNEL_PATH).status_code == 204
    assert emulator.channels == {}
    assert client.delete(CHANNEL_PATH).status_code == 404


def test_gates_activate_and_deactivate(client: httpx.Client, emulator: Emulator) -> None:
    assert client.put(GATE_PATH, json=DEPROVISIONED).status_code == 404  # never activated

    activated = client.put(GATE_PATH, json=ACTIVE)
    assert activated.status_code == 200
    assert activated.json() == {"status": "Active", "reason": "Running"}
    assert emulator.gates[RECORD] == GateState("Active", "Running")

    deactivated = client.put(GATE_PATH, json=DEPROVISIONED)
    assert deactivated.status_code == 200
    assert emulator.gates[RECORD] == GateState("Inactive", "Deprovisioned")


def test_starting_a_calling_test_answers_202_with_a_uuid4(
    client: httpx.Client, emulator: Emulator
) -> None:
    response = client.post("/v1/calling-tests", json=TEST_BODY)

    assert response.status_code == 202
    test_id = response.json()["test_id"]
    assert uuid.UUID(test_id).version == 4
    assert emulator.calling_tests[test_id] == {"record_id": RECORD, "phone_number_id": "phone-1"}


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("PUT", CHANNEL_PATH, {"name": "no record id", "links": {}}, 400),
        ("PUT", CHANNEL_PATH, {"record_id": RECORD, "name": 5, "links": {}}, 400),
        ("PUT", CHANNEL_PATH, {"record_id": RECORD, "name": "n", "links": {"a": 1}}, 400),
        ("PUT", "/v1/channels/pigeon/c1", PROVISION_BODY, 400),
        ("POST", CHANNEL_PATH, PROVISION_BODY, 405),
        ("PUT", GATE_PATH, {"status": "Inactive"}, 400),
        ("PUT", GATE_PATH, {"status": "Active", "reason": "Error"}, 400),
        ("DELETE", GATE_PATH, None, 405),
        ("POST", "/v1/calling-tests", {"record_id": RECORD}, 400),
        ("GET", "/v1/calling-tests", None, 405),
        ("GET", "/v2/anything", None, 404),
    ],
)
def test_malformed_requests_are_refused(
    client: httpx.Client, emulator: Emulator, method: str, path: str, body: object, status: int
) -> None:
    response = client.request(method, path, json=body)

    assert response.status_code == status
    assert "error" in response.json()
    assert emulator.requests[-1].status == status
    assert emulator.channels == {}


def test_a_body_that_is_not_a_json_object_is_refused(client: httpx.Client) -> None:
    not_json = client.put(GATE_PATH, content=b"{not json")
    not_object = client.put(GATE_PATH, json=["status", "Active"])

    assert (not_json.status_code, not_object.status_code) == (400, 400)
    assert "not JSON" in not_json.json()["error"]
    assert "JSON object" in not_object.json()["error"]


def test_health_check(client: httpx.Client, emulator: Emulator) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert emulator.requests == ()


# -- scripts ---------------------------------------------------------------------------


def test_a_script_is_consumed_then_normal_behaviour_resumes(
    client: httpx.Client, emulator: Emulator
) -> None:
    emulator.script(CHANNEL, BackendStep.PROVISION_CHANNEL, [503, 503, 503])

    statuses = [provision(client).status_code for _ in range(4)]

    assert statuses == [503, 503, 503, 201]
    assert [r.step for r in emulator.requests] == [BackendStep.PROVISION_CHANNEL] * 4


def test_a_scripted_success_without_a_body_behaves_normally(
    client: httpx.Client, emulator: Emulator
) -> None:
    emulator.script(RECORD, "provision_channel", [503, 200])

    assert provision(client).status_code == 503
    assert emulator.channels == {}
    second = provision(client)
    assert second.status_code == 201  # the normal answer: created
    assert "revision 1" in second.json()["response"]
    assert ("whatsapp", CHANNEL) in emulator.channels


def test_a_scripted_success_does_not_hide_a_normal_404(
    client: httpx.Client, emulator: Emulator
) -> None:
    emulator.script(CHANNEL, BackendStep.DEPROVISION_CHANNEL, [Answer(202, None, {"X-A": "1"})])

    response = client.delete(CHANNEL_PATH)

    assert (response.status_code, response.headers["X-A"]) == (404, "1")


def test_a_scripted_answer_with_a_body_is_sent_as_given_and_changes_nothing(
    client: httpx.Client, emulator: Emulator
) -> None:
    emulator.script(RECORD, BackendStep.ACTIVATE_GATE,
                    [Answer(200, "<html>", {"X-Emulated": "yes"}), (200, {"status": "Nope"})])

    first = client.put(GATE_PATH, json=ACTIVE)
    second = client.put(GATE_PATH, json=ACTIVE)

    assert (first.status_code, first.text, first.headers["X-Emulated"]) == (200, "<html>", "yes")
    assert second.json() == {"status": "Nope"}
    assert emulator.gates == {}


def test_scripts_are_per_step_and_per_target(client: httpx.Client, emulator: Emulator) -> None:
    emulator.script("other-record", BackendStep.ACTIVATE_GATE, [500])
    emulator.script(RECORD, BackendStep.DEACTIVATE_GATE, [500])

    assert client.put(GATE_PATH, json=ACTIVE).status_code == 200
    assert client.put("/v1/gates/other-record", json=ACTIVE).status_code == 500


def test_a_deprovisioning_script_may_name_the_record_of_the_channel(
    client: httpx.Client, emulator: Emulator
) -> None:
    provision(client)
    emulator.script(RECORD, BackendStep.DEPROVISION_CHANNEL, [502])

    assert client.delete(CHANNEL_PATH).status_code == 502
    assert client.delete(CHANNEL_PATH).status_code == 204


def test_the_any_target_script_applies_to_every_target(
    client: httpx.Client, emulator: Emulator
) -> None:
    emulator.script("*", BackendStep.START_CALLING_TEST, [429, 429])

    assert client.post("/v1/calling-tests", json=TEST_BODY).status_code == 429
    other = {"record_id": "rec-2", "phone_number_id": "p"}
    assert client.post("/v1/calling-tests", json=other).status_code == 429
    assert client.post("/v1/calling-tests", json=other).status_code == 202


def test_a_permanent_failure_lasts_until_cleared(client: httpx.Client, emulator: Emulator) -> None:
    emulator.fail_permanently(RECORD, BackendStep.ACTIVATE_GATE)

    assert [client.put(GATE_PATH, json=ACTIVE).status_code for _ in range(3)] == [400] * 3
    emulator.clear_scripts(RECORD)
    assert client.put(GATE_PATH, json=ACTIVE).status_code == 200


def test_then_answer_follows_the_queue(client: httpx.Client, emulator: Emulator) -> None:
    emulator.script(RECORD, BackendStep.ACTIVATE_GATE, [503], then=409)

    statuses = [client.put(GATE_PATH, json=ACTIVE).status_code for _ in range(3)]

    assert statuses == [503, 409, 409]


def test_clear_scripts_without_target_clears_all(client: httpx.Client, emulator: Emulator) -> None:
    emulator.script(RECORD, BackendStep.ACTIVATE_GATE, [500])
    emulator.script(CHANNEL, BackendStep.PROVISION_CHANNEL, [500])

    emulator.clear_scripts()

    assert client.put(GATE_PATH, json=ACTIVE).status_code == 200
    assert provision(client).status_code == 201


# -- idempotency -----------------------------------------------------------------------


def test_the_same_key_replays_the_first_successful_answer(
    client: httpx.Client, emulator: Emulator
) -> None:
    headers = {"Idempotency-Key": "rec-1:3:start_calling_test"}

    first = client.post("/v1/calling-tests", json=TEST_BODY, headers=headers)
    again = client.post("/v1/calling-tests", json=TEST_BODY, headers=headers)

    assert again.status_code == first.status_code == 202
    assert again.json() == first.json()
    assert len(emulator.calling_tests) == 1
    assert [r.replayed for r in emulator.requests] == [False, True]


def test_a_replay_wins_over_scripts_and_failures_are_not_remembered(
    client: httpx.Client, emulator: Emulator
) -> None:
    emulator.script(CHANNEL, BackendStep.PROVISION_CHANNEL, [503])

    assert provision(client, key="k").status_code == 503
    assert provision(client, key="k").status_code == 201
    emulator.fail_permanently(CHANNEL, BackendStep.PROVISION_CHANNEL)
    replayed = provision(client, key="k")

    assert replayed.status_code == 201
    assert "revision 1" in replayed.json()["response"]
    assert [r.idempotency_key for r in emulator.requests] == ["k", "k", "k"]


def test_a_key_reused_for_another_request_is_refused(client: httpx.Client) -> None:
    headers = {"Idempotency-Key": "k"}
    client.put(GATE_PATH, json=ACTIVE, headers=headers)

    response = client.put(GATE_PATH, json=DEPROVISIONED, headers=headers)

    assert response.status_code == 422


# -- failure rate, latency, concurrency ------------------------------------------------


def statuses_with(emulator: Emulator, count: int) -> list[int]:
    with httpx.Client(transport=emulator.transport(), base_url="http://e") as client:
        return [client.put(f"/v1/gates/r{i}", json=ACTIVE).status_code for i in range(count)]


def test_failure_rate_with_a_seed_is_deterministic() -> None:
    first = statuses_with(Emulator(failure_rate=0.5, seed=42), 40)
    second = statuses_with(Emulator(failure_rate=0.5, seed=42), 40)

    assert first == second
    assert set(first) == {200, 503}


@pytest.mark.parametrize(("rate", "expected"), [(0.0, {200}), (1.0, {503})])
def test_failure_rate_bounds(rate: float, expected: set[int]) -> None:
    assert set(statuses_with(Emulator(failure_rate=rate, seed=1), 10)) == expected


def test_latency_is_waited_before_each_backend_answer() -> None:
    waits: list[float] = []
    emulator = Emulator(latency_ms=250, sleep=waits.append)

    statuses_with(emulator, 2)
    emulator.handle("GET", "/healthz", b"")

    assert waits == [0.25, 0.25]


def test_a_delayed_answer_acts_at_once_and_answers_late() -> None:
    """A backend that acted, then answered after the client gave up: the retry with the
    same key gets the first answer replayed, without a second effect or another wait."""
    waits: list[float] = []
    emulator = Emulator(sleep=waits.append)
    emulator.script(CHANNEL, BackendStep.PROVISION_CHANNEL, [Answer(200, delay_ms=1500)])
    with httpx.Client(transport=emulator.transport(), base_url="http://e") as client:
        first = provision(client, key="k1")
        again = provision(client, key="k1")

    assert (first.status_code, again.status_code) == (201, 201)
    assert waits == [1.5]
    assert emulator.channels[("whatsapp", CHANNEL)]["revision"] == 1
    assert [(r.delay_ms, r.replayed) for r in emulator.requests] == [(1500, False), (0, True)]


def test_a_delayed_failure_is_scripted_over_http() -> None:
    waits: list[float] = []
    emulator = Emulator(sleep=waits.append)
    script = {"target": "*", "step": "activate_gate",
              "answers": [{"status": 503, "delay_ms": 20}]}
    bad = {**script, "answers": [{"status": 503, "delay_ms": "soon"}]}
    with httpx.Client(transport=emulator.transport(), base_url="http://e") as client:
        assert client.post("/_emulator/script", json=script).status_code == 200
        assert client.put(GATE_PATH, json=ACTIVE).status_code == 503
        recorded = client.get("/_emulator/requests").json()
        assert client.post("/_emulator/script", json=bad).status_code == 400

    assert waits == [0.02]
    assert recorded[0]["delay_ms"] == 20
    with pytest.raises(ValueError, match="delay_ms"):
        Answer(200, delay_ms=-1)


@pytest.mark.parametrize("kwargs", [{"failure_rate": 1.5}, {"latency_ms": -1}])
def test_nonsense_configuration_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        Emulator(**kwargs)


def test_configuration_from_the_environment() -> None:
    emulator = Emulator.from_env({"EMULATOR_FAILURE_RATE": "0.25", "EMULATOR_LATENCY_MS": "5",
                                  "EMULATOR_SEED": "9"})

    assert (emulator.failure_rate, emulator.latency_ms, emulator.seed) == (0.25, 5.0, 9)
    with pytest.raises(ValueError, match="EMULATOR_SEED"):
        Emulator.from_env({"EMULATOR_SEED": "abc"})


def test_the_cli_refuses_a_bad_environment_as_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--port", "0"], environ={"EMULATOR_FAILURE_RATE": "lots"})

    assert exit_info.value.code == 2
    assert "EMULATOR_FAILURE_RATE" in capsys.readouterr().err


def test_requests_are_recorded_from_many_threads(emulator: Emulator) -> None:
    def worker(n: int) -> None:
        with httpx.Client(transport=emulator.transport(), base_url="http://e") as client:
            for i in range(25):
                client.put(f"/v1/gates/t{n}-{i}", json=ACTIVE,
                           headers={"Idempotency-Key": f"t{n}-{i}"})

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(emulator.requests) == 200
    assert len({r.idempotency_key for r in emulator.requests}) == 200
    assert len(emulator.gates) == 200


# -- admin API -------------------------------------------------------------------------


def test_scripts_can_be_set_and_cleared_over_http(client: httpx.Client) -> None:
    script = {"target": RECORD, "step": "activate_gate",
              "answers": [503, [200, {"status": "Nope"}],
                          {"status": 429, "headers": {"Retry-After": "1"}}]}

    assert client.post("/_emulator/script", json=script).status_code == 200
    assert client.put(GATE_PATH, json=ACTIVE).status_code == 503
    assert client.put(GATE_PATH, json=ACTIVE).json() == {"status": "Nope"}
    assert client.put(GATE_PATH, json=ACTIVE).headers["Retry-After"] == "1"

    client.post("/_emulator/script", json={"target": RECORD, "step": "activate_gate",
                                           "then": 400})
    assert client.put(GATE_PATH, json=ACTIVE).status_code == 400
    assert client.delete("/_emulator/script", params={"target": RECORD}).status_code == 200
    assert client.put(GATE_PATH, json=ACTIVE).status_code == 200


@pytest.mark.parametrize(
    "script",
    [
        {"step": "activate_gate", "answers": [503]},
        {"target": RECORD, "step": "launch", "answers": [503]},
        {"target": RECORD, "step": "activate_gate", "answers": 503},
        {"target": RECORD, "step": "activate_gate", "answers": [99]},
        {"target": RECORD, "step": "activate_gate", "answers": ["503"]},
        {"target": RECORD, "step": "activate_gate", "then": {"status": 500, "headers": [1]}},
        ["not", "an", "object"],
    ],
)
def test_a_malformed_script_is_refused(client: httpx.Client, script: object) -> None:
    response = client.post("/_emulator/script", json=script)

    assert response.status_code == 400
    assert response.json()["error"]


def test_state_requests_and_reset_over_http(client: httpx.Client, emulator: Emulator) -> None:
    provision(client, key="k1")
    client.put(GATE_PATH, json=ACTIVE)

    state = client.get("/_emulator/state").json()
    assert state["channels"][0]["channel_id"] == CHANNEL
    assert state["gates"] == {RECORD: {"status": "Active", "reason": "Running"}}
    recorded = client.get("/_emulator/requests").json()
    assert [(r["method"], r["step"], r["idempotency_key"]) for r in recorded] == [
        ("PUT", "provision_channel", "k1"), ("PUT", "activate_gate", None)]

    assert client.post("/_emulator/reset").status_code == 200
    assert emulator.requests == ()
    assert emulator.channels == {}
    assert provision(client, key="k1").status_code == 201  # the key is forgotten too


def test_an_unknown_admin_endpoint_is_404(client: httpx.Client) -> None:
    assert client.get("/_emulator/nothing").status_code == 404
