"""The backends client against the emulator and httpx.MockTransport (SPEC §4)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from statemachine.effects import BackendCall, BackendStep, idempotency_key
from statemachine.table import EXCEPTION_DETAILS_MAX, PROVISIONING_RESPONSE_MAX, ChannelKind
from worker.backends import (
    Backends,
    CallFailure,
    CallResult,
    InvalidCallError,
)
from worker.emulators import Emulator
from worker.settings import BackendSettings

RECORD_ID = "4f9d1c1e-0000-4000-8000-000000000001"
CHANNEL_ID = "9a0b7c2d-0000-4000-8000-000000000002"
PHONE_ID = "1b2c3d4e-0000-4000-8000-000000000003"
BASE = "http://emulator.local"

Handler = Callable[[httpx.Request], httpx.Response]


def backend_call(step: BackendStep, version: int = 2) -> BackendCall:
    return BackendCall(
        step=step,
        record_id=RECORD_ID,
        idempotency_key=idempotency_key(RECORD_ID, version, step),
        kind=ChannelKind.WHATSAPP,
        channel_id=CHANNEL_ID,
        name="Contoso WhatsApp",
        links={"msdyn_communicationprovidersettingid": "5e6f7a8b-0000-4000-8000-000000000004"},
        phone_number_id=PHONE_ID,
    )


def settings(base: str | None = BASE, **overrides: Any) -> BackendSettings:
    return BackendSettings(provisioner_url=base, gatekeeper_url=base, calling_test_url=base,
                           **overrides)


class Sleeps(list[float]):
    """A fake ``sleep`` that records what it was asked to wait."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def emulator() -> Emulator:
    return Emulator()


@pytest.fixture
def backends(emulator: Emulator, sleeps: Sleeps) -> Iterator[Backends]:
    with httpx.Client(transport=emulator.transport()) as client:
        yield Backends(settings(), client, sleep=sleeps, rng=random.Random(1))


def mock_backends(
    handler: Handler, sleeps: Sleeps, base: str = BASE, **overrides: Any
) -> Backends:
    client = httpx.Client(transport=httpx.MockTransport(handler))
    return Backends(settings(base, **overrides), client, sleep=sleeps, rng=random.Random(1))


def answer(status: int, body: object = None, headers: dict[str, str] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return handler


def failure_of(result: CallResult) -> CallFailure:
    assert not result.ok
    assert result.failure is not None
    return result.failure


# -- success ---------------------------------------------------------------------------


def test_every_step_succeeds_against_the_emulator(backends: Backends, emulator: Emulator) -> None:
    provisioned = backends.call(backend_call(BackendStep.PROVISION_CHANNEL))
    activated = backends.call(backend_call(BackendStep.ACTIVATE_GATE))
    test = backends.call(backend_call(BackendStep.START_CALLING_TEST))

    assert provisioned.ok
    assert provisioned.response is not None
    assert CHANNEL_ID in provisioned.response
    assert activated.ok
    assert test.ok
    assert test.test_id in emulator.calling_tests
    assert ("whatsapp", CHANNEL_ID) in emulator.channels
    assert emulator.gates[RECORD_ID].status == "Active"

    deactivated = backends.call(backend_call(BackendStep.DEACTIVATE_GATE, version=5))
    deprovisioned = backends.call(backend_call(BackendStep.DEPROVISION_CHANNEL, version=5))

    assert deactivated.ok
    assert deprovisioned.ok
    assert emulator.channels == {}
    assert emulator.gates[RECORD_ID].reason == "Deprovisioned"
    assert all(r.attempts == 1 for r in (provisioned, activated, test, deactivated,
                                          deprovisioned))


@pytest.mark.parametrize(
    ("step", "method", "path", "body"),
    [
        (BackendStep.PROVISION_CHANNEL, "PUT", f"/v1/channels/whatsapp/{CHANNEL_ID}",
         {"record_id": RECORD_ID, "name": "Contoso WhatsApp",
          "links": {"msdyn_communicationprovidersettingid":
                    "5e6f7a8b-0000-4000-8000-000000000004"}}),
        (BackendStep.DEPROVISION_CHANNEL, "DELETE", f"/v1/channels/whatsapp/{CHANNEL_ID}", None),
        (BackendStep.ACTIVATE_GATE, "PUT", f"/v1/gates/{RECORD_ID}", {"status": "Active"}),
        (BackendStep.DEACTIVATE_GATE, "PUT", f"/v1/gates/{RECORD_ID}",
         {"status": "Inactive", "reason": "Deprovisioned"}),
        (BackendStep.START_CALLING_TEST, "POST", "/v1/calling-tests",
         {"record_id": RECORD_ID, "phone_number_id": PHONE_ID}),
    ],
)
def test_each_step_sends_the_request_of_the_spec(
    step: BackendStep, method: str, path: str, body: object, sleeps: Sleeps
) -> None:
    seen: list[httpx.Request] = []
    replies = {
        BackendStep.PROVISION_CHANNEL: httpx.Response(201, json={"response": "ok"}),
        BackendStep.DEPROVISION_CHANNEL: httpx.Response(204),
        BackendStep.ACTIVATE_GATE: httpx.Response(200, json={"status": "Active",
                                                             "reason": "Running"}),
        BackendStep.DEACTIVATE_GATE: httpx.Response(200),
        BackendStep.START_CALLING_TEST: httpx.Response(202, json={"test_id": "t-1"}),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return replies[step]

    # A trailing slash on the base URL must not double the slash in the path.
    result = mock_backends(handler, sleeps, base=BASE + "/").call(backend_call(step))

    assert result.ok
    (request,) = seen
    assert request.method == method
    assert str(request.url) == BASE + path
    assert request.headers["Idempotency-Key"] == f"{RECORD_ID}:2:{step.value}"
    assert (json.loads(request.content) if request.content else None) == body


def test_base_url_with_a_path_prefix_keeps_it(sleeps: Sleeps) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"status": "Active", "reason": "Running"})

    backends = mock_backends(handler, sleeps, base="http://gw.local/gatekeeper//")

    assert backends.call(backend_call(BackendStep.ACTIVATE_GATE)).ok
    assert seen == [f"http://gw.local/gatekeeper/v1/gates/{RECORD_ID}"]


def test_provisioning_response_is_cut_visibly_to_its_column(sleeps: Sleeps) -> None:
    backends = mock_backends(answer(200, {"response": "x" * 5000}), sleeps)

    result = backends.call(backend_call(BackendStep.PROVISION_CHANNEL))

    assert result.ok
    assert result.response is not None
    assert len(result.response) <= PROVISIONING_RESPONSE_MAX
    assert result.response.endswith("chars]")
    assert "truncated" in result.response


# -- transient failures and retries ----------------------------------------------------


def test_two_503_then_200_succeeds_on_try_3_with_the_same_key(
    backends: Backends, emulator: Emulator, sleeps: Sleeps
) -> None:
    emulator.script(RECORD_ID, BackendStep.PROVISION_CHANNEL, [503, 503, 200])

    result = backends.call(backend_call(BackendStep.PROVISION_CHANNEL))

    assert result.ok
    assert result.attempts == 3
    assert [r.status for r in emulator.requests] == [503, 503, 201]
    assert {r.idempotency_key for r in emulator.requests} == {
        f"{RECORD_ID}:2:provision_channel"}
    assert len(sleeps) == 2


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried_until_tries_run_out(status: int, sleeps: Sleeps) -> None:
    backends = mock_backends(answer(status, {"error": "busy"}), sleeps, max_tries=3)

    failure = failure_of(backends.call(backend_call(BackendStep.ACTIVATE_GATE)))

    assert failure.transient
    assert failure.status == status
    assert failure.error_class == f"HTTP {status}"
    assert failure.attempts == 3
    assert len(sleeps) == 2


def test_backoff_is_exponential_with_full_jitter(sleeps: Sleeps) -> None:
    backends = mock_backends(answer(503), sleeps, max_tries=6, backoff_base=0.5, backoff_cap=3.0)

    backends.call(backend_call(BackendStep.ACTIVATE_GATE))

    ceilings = [0.5, 1.0, 2.0, 3.0, 3.0]
    assert len(sleeps) == len(ceilings)
    assert all(0 <= s <= c for s, c in zip(sleeps, ceilings, strict=True))
    assert len(set(sleeps)) == len(sleeps)  # jittered, not fixed steps


def test_retry_after_seconds_is_slept(sleeps: Sleeps) -> None:
    backends = mock_backends(answer(429, {"error": "slow down"}, {"Retry-After": "2"}), sleeps,
                             max_tries=3)

    backends.call(backend_call(BackendStep.START_CALLING_TEST))

    assert sleeps == [2.0, 2.0]


def test_retry_after_is_capped(sleeps: Sleeps) -> None:
    backends = mock_backends(answer(503, None, {"Retry-After": "3600"}), sleeps, max_tries=2,
                             retry_after_cap=7.5)

    backends.call(backend_call(BackendStep.ACTIVATE_GATE))

    assert sleeps == [7.5]


def test_retry_after_as_http_date(sleeps: Sleeps) -> None:
    future = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    past = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    replies = iter([answer(503, None, {"Retry-After": future}),
                    answer(503, None, {"Retry-After": past}),
                    answer(200, {"status": "Active", "reason": "Running"})])

    def handler(request: httpx.Request) -> httpx.Response:
        return next(replies)(request)

    backends = mock_backends(handler, sleeps, retry_after_cap=4.0)

    assert backends.call(backend_call(BackendStep.ACTIVATE_GATE)).ok
    assert sleeps == [4.0, 0.0]


def test_retry_after_as_a_date_without_zone_is_read_as_gmt(sleeps: Sleeps) -> None:
    backends = mock_backends(answer(503, None, {"Retry-After": "Sun, 06 Nov 1994 08:49:37 -0000"}),
                             sleeps, max_tries=2)

    backends.call(backend_call(BackendStep.ACTIVATE_GATE))

    assert sleeps == [0.0]  # long past: no wait


def test_unreadable_retry_after_falls_back_to_backoff(sleeps: Sleeps) -> None:
    backends = mock_backends(answer(503, None, {"Retry-After": "soon"}), sleeps, max_tries=2,
                             backoff_base=0.2)

    backends.call(backend_call(BackendStep.ACTIVATE_GATE))

    assert len(sleeps) == 1
    assert 0 <= sleeps[0] <= 0.2


def test_connection_errors_exhaust_the_tries_as_a_transient_failure(sleeps: Sleeps) -> None:
    keys: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    backends = mock_backends(refuse, sleeps)

    result = backends.call(backend_call(BackendStep.PROVISION_CHANNEL))

    failure = failure_of(result)
    assert failure.transient
    assert failure.status is None
    assert failure.error_class == "ConnectError"
    assert failure.attempts == result.attempts == 4
    assert len(sleeps) == 3
    assert len(set(keys)) == 1
    assert "Connection refused" in failure.details()


def test_a_timeout_is_transient(sleeps: Sleeps) -> None:
    tries = iter([True, False])

    def slow_once(request: httpx.Request) -> httpx.Response:
        if next(tries):
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(202, json={"test_id": "t-7"})

    result = mock_backends(slow_once, sleeps).call(backend_call(BackendStep.START_CALLING_TEST))

    assert result.ok
    assert result.test_id == "t-7"
    assert result.attempts == 2


# -- permanent failures ----------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 409, 422, 302])
def test_other_statuses_are_permanent_without_retry(status: int, sleeps: Sleeps) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(status, json={"error": "no"})

    failure = failure_of(mock_backends(handler, sleeps).call(
        backend_call(BackendStep.PROVISION_CHANNEL)))

    assert not failure.transient
    assert failure.status == status
    assert failure.attempts == 1
    assert len(calls) == 1
    assert sleeps == []


def test_a_400_from_the_emulator_is_permanent(
    backends: Backends, emulator: Emulator, sleeps: Sleeps
) -> None:
    emulator.fail_permanently(CHANNEL_ID, BackendStep.PROVISION_CHANNEL, 400, {"error": "bad"})

    failure = failure_of(backends.call(backend_call(BackendStep.PROVISION_CHANNEL)))

    assert failure.error_class == "HTTP 400"
    assert failure.summary() == "provision_channel failed: HTTP 400"
    assert '"bad"' in failure.body_start
    assert len(emulator.requests) == 1
    assert sleeps == []


@pytest.mark.parametrize("step", [BackendStep.DEPROVISION_CHANNEL, BackendStep.DEACTIVATE_GATE])
def test_404_means_already_gone_when_tearing_down(
    step: BackendStep, backends: Backends, emulator: Emulator
) -> None:
    result = backends.call(backend_call(step))

    assert result.ok
    assert [r.status for r in emulator.requests] == [404]


@pytest.mark.parametrize("step", [BackendStep.PROVISION_CHANNEL, BackendStep.ACTIVATE_GATE,
                                  BackendStep.START_CALLING_TEST])
def test_404_is_permanent_when_setting_up(step: BackendStep, sleeps: Sleeps) -> None:
    failure = failure_of(mock_backends(answer(404, {"error": "?"}), sleeps).call(
        backend_call(step)))

    assert not failure.transient
    assert failure.status == 404


@pytest.mark.parametrize(
    ("step", "status", "body"),
    [
        (BackendStep.PROVISION_CHANNEL, 200, "<html>ok</html>"),
        (BackendStep.PROVISION_CHANNEL, 201, {"result": "ok"}),
        (BackendStep.PROVISION_CHANNEL, 200, {"response": 42}),
        (BackendStep.PROVISION_CHANNEL, 200, ["response"]),
        (BackendStep.ACTIVATE_GATE, 200, {"status": "Inactive", "reason": "Error"}),
        (BackendStep.ACTIVATE_GATE, 200, {"status": "Active"}),
        (BackendStep.START_CALLING_TEST, 202, {}),
        (BackendStep.START_CALLING_TEST, 202, {"test_id": ""}),
        (BackendStep.START_CALLING_TEST, 202, {"test_id": 7}),
    ],
)
def test_success_status_with_a_bad_body_is_a_permanent_invalid_response(
    step: BackendStep, status: int, body: object, sleeps: Sleeps
) -> None:
    failure = failure_of(mock_backends(answer(status, body), sleeps).call(backend_call(step)))

    assert not failure.transient
    assert failure.error_class == "InvalidResponse"
    assert failure.status == status
    assert failure.attempts == 1
    assert failure.reason
    assert sleeps == []
    assert failure.summary() == f"{step.value} failed: InvalidResponse (HTTP {status})"


def test_scripted_bad_body_from_the_emulator_is_invalid(
    backends: Backends, emulator: Emulator
) -> None:
    emulator.script(RECORD_ID, BackendStep.START_CALLING_TEST, [(202, {"id": "t"})])

    failure = failure_of(backends.call(backend_call(BackendStep.START_CALLING_TEST)))

    assert failure.error_class == "InvalidResponse"


def test_missing_base_url_is_a_permanent_not_configured_failure(sleeps: Sleeps) -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request may be sent")

    backends = Backends(BackendSettings(provisioner_url=BASE, gatekeeper_url=None,
                                        calling_test_url=""),
                        httpx.Client(transport=httpx.MockTransport(unreachable)), sleep=sleeps)

    for step in (BackendStep.ACTIVATE_GATE, BackendStep.START_CALLING_TEST):
        failure = failure_of(backends.call(backend_call(step)))
        assert failure.error_class == "NotConfigured"
        assert not failure.transient
        assert failure.status is None
        assert "not configured" in failure.details()


def test_unsupported_scheme_fails_permanently_with_the_built_client(sleeps: Sleeps) -> None:
    with Backends(settings("ftp://emulator.local"), sleep=sleeps) as backends:
        failure = failure_of(backends.call(backend_call(BackendStep.ACTIVATE_GATE)))

    assert failure.error_class == "UnsupportedProtocol"
    assert not failure.transient
    assert sleeps == []


def test_a_call_lacking_what_its_step_needs_is_a_bug(backends: Backends) -> None:
    call = BackendCall(BackendStep.PROVISION_CHANNEL, RECORD_ID, "k", kind=None)

    with pytest.raises(InvalidCallError, match="kind and channel_id"):
        backends.call(call)


# -- what a failure says ---------------------------------------------------------------


def test_a_huge_body_is_cut_visibly_and_details_fit_the_column(sleeps: Sleeps) -> None:
    backends = mock_backends(answer(500, "E" * 100_000), sleeps, max_tries=3)

    failure = failure_of(backends.call(backend_call(BackendStep.PROVISION_CHANNEL)))
    details = failure.details()

    assert "truncated" in failure.body_start
    assert failure.body_start.endswith("chars]")
    assert len(details) <= EXCEPTION_DETAILS_MAX
    assert details.splitlines()[:4] == [
        "step: provision_channel",
        "error: HTTP 500 (transient, tries exhausted)",
        "status: 500",
        "attempts: 3",
    ]


def test_details_fit_the_column_even_with_a_huge_reason() -> None:
    failure = CallFailure(BackendStep.ACTIVATE_GATE, transient=False, status=None,
                          error_class="X", body_start="b" * 9000, attempts=1,
                          reason="r" * 9000)

    assert len(failure.details()) == EXCEPTION_DETAILS_MAX
    assert failure.details().endswith("chars]")


def test_summary_is_one_line_naming_step_and_status(sleeps: Sleeps) -> None:
    backends = mock_backends(answer(503, "down\nfor\nmaintenance"), sleeps, max_tries=3)

    summary = failure_of(backends.call(backend_call(BackendStep.ACTIVATE_GATE))).summary()

    assert summary == "activate_gate failed: HTTP 503 after 3 tries"


# -- logging and lifecycle -------------------------------------------------------------


def test_each_try_is_logged_without_url_credentials(emulator: Emulator, sleeps: Sleeps) -> None:
    emulator.script(RECORD_ID, BackendStep.ACTIVATE_GATE, [503])
    base = "http://svc:s3cret@emulator.local"
    with httpx.Client(transport=emulator.transport()) as client, capture_logs() as logs:
        Backends(settings(base), client, sleep=sleeps).call(backend_call(BackendStep.ACTIVATE_GATE))

    tries = [entry for entry in logs if entry["event"] == "backend.try"]
    assert [(t["attempt"], t["status"]) for t in tries] == [(1, 503), (2, 200)]
    assert all(t["step"] == "activate_gate" for t in tries)
    assert all(t["idempotency_key"] == f"{RECORD_ID}:2:activate_gate" for t in tries)
    assert "s3cret" not in repr(logs)
    assert tries[0]["url"] == f"http://emulator.local/v1/gates/{RECORD_ID}"


def test_close_leaves_a_client_passed_in_open_and_closes_its_own() -> None:
    client = httpx.Client(transport=httpx.MockTransport(answer(200)))
    with Backends(settings(), client):
        pass
    assert not client.is_closed
    client.close()

    own = Backends(settings())
    own.close()
    with pytest.raises(RuntimeError):  # httpx refuses requests on a closed client
        own._client.get(BASE)


@pytest.mark.parametrize(
    "overrides",
    [{"max_tries": 0}, {"connect_timeout": 0}, {"read_timeout": -1}, {"backoff_base": -0.1}],
)
def test_settings_refuse_nonsense(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        settings(**overrides)
