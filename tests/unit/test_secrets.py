"""A password in a Redis, broker or backend URL never appears in a repr, a log line, an
error or a command's output (SPEC §6). Unreachable servers are closed loopback ports.

The worker's own startup lines are checked with a real worker in
tests/integration/test_metrics_endpoint.py.
"""

from __future__ import annotations

import traceback
import uuid
from collections.abc import Iterator

import httpx
import pytest

from statemachine import BackendCall, BackendStep, ChannelKind
from worker import bootstrap
from worker.app import celery_config
from worker.backends import Backends
from worker.cli.console import main
from worker.emulators import free_port
from worker.errors import StoreError
from worker.ops.health import run_checks
from worker.settings import BackendSettings, Settings, redact_url

SECRET = "s3cret-P4ss"


def closed_url(scheme: str = "redis", user: str = "") -> str:
    tail = "/0" if scheme == "redis" else ""
    return f"{scheme}://{user}:{SECRET}@127.0.0.1:{free_port()}{tail}"


@pytest.fixture
def settings() -> Settings:
    return Settings(redis_url=closed_url(), broker_url=closed_url(user="celery"),
                    backends=BackendSettings(
                        provisioner_url=closed_url("http", "svc"),
                        gatekeeper_url=closed_url("http", "svc"),
                        calling_test_url=closed_url("http", "svc"),
                        max_tries=3, backoff_base=0.0, backoff_cap=0.0),
                    health_timeout=0.5)


def test_settings_repr_and_describe_hide_every_password(settings: Settings) -> None:
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    described = settings.describe()
    assert SECRET not in repr(described)
    assert described["redis_url"].startswith("redis://:***@127.0.0.1:")
    assert described["broker_url"].startswith("redis://celery:***@127.0.0.1:")
    assert described["provisioner_url"].startswith("http://svc:***@127.0.0.1:")


def test_redact_url_keeps_everything_but_the_password() -> None:
    assert redact_url(f"rediss://user:{SECRET}@cache.example:6380/2?ssl_cert_reqs=none") == (
        "rediss://user:***@cache.example:6380/2?ssl_cert_reqs=none")
    assert redact_url("redis://cache.example:6379/0") == "redis://cache.example:6379/0"
    assert redact_url(None) is None


def test_a_store_error_from_an_unreachable_redis_names_no_password(settings: Settings) -> None:
    from worker.store.redis import RedisStateStore

    store = RedisStateStore(bootstrap.redis_client(settings))
    with pytest.raises(StoreError) as caught:
        store.load(str(uuid.uuid4()))
    error = caught.value
    assert "Connection refused" in str(error)
    whole = str(error) + repr(error) + "".join(traceback.format_exception(error))
    assert SECRET not in whole


def test_health_lines_name_the_server_without_its_password(settings: Settings) -> None:
    results = run_checks(settings, bootstrap.redis_client(settings, probe=True))
    assert not any(check.ok for check in results)
    assert all(SECRET not in check.line() for check in results)
    assert "redis://:***@127.0.0.1:" in results[0].line()


def test_backend_log_lines_and_exception_details_name_no_password(
    settings: Settings, capsys: pytest.CaptureFixture[str],
) -> None:
    backends = Backends(settings.backends, httpx.Client(), sleep=lambda _: None)
    record_id, channel_id = str(uuid.uuid4()), str(uuid.uuid4())
    call = BackendCall(step=BackendStep.PROVISION_CHANNEL, record_id=record_id,
                       idempotency_key=f"{record_id}:2:provision_channel",
                       kind=ChannelKind.TEAMS, channel_id=channel_id, name="Contoso",
                       links={})
    result = backends.call(call)
    backends.close()
    assert not result.ok
    assert result.failure is not None
    assert result.failure.error_class == "ConnectError"
    err = capsys.readouterr().err
    assert err.count("backend.try") == 3  # one line per try
    assert SECRET not in err
    assert SECRET not in result.failure.details() + result.failure.summary()


@pytest.fixture
def unreachable_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("PROVISIONING_REDIS_URL", closed_url())
    monkeypatch.setenv("PROVISIONING_HEALTH_TIMEOUT", "0.5")
    bootstrap.reset()
    yield
    bootstrap.reset()


@pytest.mark.parametrize("argv", [["list"], ["show", str(uuid.uuid4())],
                                  ["history", str(uuid.uuid4())], ["failed", "list"],
                                  ["health"]], ids=lambda argv: argv[0])
def test_the_cli_error_line_names_no_password(
    argv: list[str], unreachable_env: None, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert err.strip(), "an error line on stderr"
    assert "Connection refused" in err
    assert SECRET not in out + err
    assert "Traceback" not in err


def test_a_malformed_setting_names_the_variable_not_the_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PROVISIONING_REDIS_URL", closed_url())
    monkeypatch.setenv("PROVISIONING_METRICS_PORT", "99999")
    bootstrap.reset()
    try:
        assert main(["list"]) == 2  # a bad setting is a usage error
    finally:
        bootstrap.reset()
    err = capsys.readouterr().err
    assert "PROVISIONING_METRICS_PORT" in err
    assert SECRET not in err


def test_the_celery_banner_masks_the_broker_password(settings: Settings) -> None:
    """Celery prints the broker in its banner with ``as_uri()``, which masks passwords."""
    from kombu import Connection

    broker = celery_config(settings)["broker_url"]
    assert SECRET in broker  # Celery needs it to connect ...
    assert SECRET not in Connection(broker).as_uri()  # ... and never shows it


# -- the HTTP API: tokens and JWTs (SPEC §8) ----------------------------------------------


def test_an_api_token_never_appears_in_a_repr_a_log_line_an_answer_or_token_list(
    memory_service: object, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.unit.http_support import make_api
    from worker.cli import http as commands
    from worker.http.auth import Role
    from worker.service import Service

    assert isinstance(memory_service, Service)
    api = make_api(memory_service)
    created = api.tokens.create("ci", Role.READER)
    token, secret = created.token, created.token.rsplit("_", 1)[1]
    wrong = token[:-4] + "AAAA"
    answers = [api.get("/api/v1/records", token=token),
               api.get("/api/v1/records", token=wrong),
               api.post("/api/v1/events", token=token, json={}),
               api.get("/api/v1/records", token="eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl")]
    assert [a.status_code for a in answers] == [200, 401, 403, 401]
    monkeypatch.setattr(commands, "_tokens", lambda: api.tokens)
    assert main(["token", "list"]) == 0
    assert main(["token", "list", "--json"]) == 0
    out, err = capsys.readouterr()
    shown = out + err + "".join(a.text + str(a.headers) for a in answers)
    shown += repr(created) + repr(created.entry) + repr(api.tokens.entries())
    for text in (token, secret, wrong, wrong.rsplit("_", 1)[1], created.entry.digest,
                 "c2lnbmF0dXJl"):
        assert text not in shown
    assert "ci" in out  # the list did print the token's name


def test_token_create_prints_the_token_once_as_the_last_line(
    memory_service: object, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.unit.http_support import make_api
    from worker.cli import http as commands
    from worker.service import Service

    assert isinstance(memory_service, Service)
    api = make_api(memory_service)
    monkeypatch.setattr(commands, "_tokens", lambda: api.tokens)
    assert main(["token", "create", "--name", "ci", "--role", "submitter",
                 "--expires-in", "30"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    token = lines[-1]
    assert token.startswith("pst_")
    assert sum(token in line for line in lines) == 1
    assert api.tokens.verify(token) is not None
    assert main(["token", "create", "--name", "ci", "--role", "reader"]) == 1
    assert main(["token", "revoke", "ci"]) == 0
    assert api.tokens.verify(token) is None
