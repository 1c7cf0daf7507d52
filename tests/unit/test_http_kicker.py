"""The API's drain kicks: coalesced on one thread, never lost to a failing broker (the
recovery sweep covers them), sent before the process stops; and the API's settings."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from worker.cli import main
from worker.errors import ConfigurationError
from worker.http.kicker import Kicker
from worker.settings import Settings


class Broker:
    def __init__(self, fail: int = 0) -> None:
        self.sent: list[list[str]] = []
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, record_ids: Sequence[str]) -> None:
        self.gate.wait(10)
        if self.fail:
            self.fail -= 1
            raise ConnectionError("broker down")
        self.sent.append(list(record_ids))


def test_kicks_of_one_moment_travel_together_once_each() -> None:
    broker = Broker()
    kicker = Kicker(broker, linger=0.2)
    for record_id in ("a", "b", "a", "c"):
        kicker([record_id])
    assert kicker.flush(5)
    assert broker.sent == [["a", "b", "c"]]
    kicker(["d"])
    kicker.close()
    assert broker.sent == [["a", "b", "c"], ["d"]]


def test_kicks_that_arrive_while_one_is_sent_go_in_the_next() -> None:
    broker = Broker()
    broker.gate.clear()
    kicker = Kicker(broker, linger=0.0)
    kicker(["a"])
    threading.Event().wait(0.1)  # the thread is in the send, held by the gate
    kicker(["b"])
    kicker(["c"])
    broker.gate.set()
    assert kicker.flush(5)
    assert broker.sent == [["a"], ["b", "c"]]
    kicker.close()


def test_a_failing_send_is_logged_and_the_kicker_goes_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    broker = Broker(fail=1)
    kicker = Kicker(broker, linger=0.0)
    kicker(["a"])
    assert kicker.flush(5)
    kicker(["b"])
    assert kicker.flush(5)
    kicker.close()
    assert broker.sent == [["b"]]
    assert "kick_failed" in capsys.readouterr().err


@pytest.mark.parametrize(("variable", "value", "problem"), [
    ("PROVISIONING_API_PORT", "70000", "must be a port number"),
    ("PROVISIONING_API_PORT", "0", "must be a port number"),
    ("PROVISIONING_OIDC_ISSUER", "ftp://login.example", "must be a URL starting http"),
    ("PROVISIONING_OIDC_JWKS_URL", "keys.json", "must be a URL starting http"),
    ("PROVISIONING_OIDC_JWKS_CACHE_SECONDS", "0", "must be positive"),
    ("PROVISIONING_API_MAX_BODY_BYTES", "0", "must be positive"),
    ("PROVISIONING_API_SHUTDOWN_TIMEOUT", "-1", "must not be negative"),
    ("PROVISIONING_OIDC_LEEWAY_SECONDS", "-5", "must not be negative"),
    ("PROVISIONING_OIDC_ISSUER", "https://login.microsoftonline.com/t/v2.0", "set both"),
])
def test_a_bad_api_setting_is_named(variable: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{variable}.*{problem}"):
        Settings.from_env({variable: value})


def test_api_settings_are_read_from_the_environment() -> None:
    settings = Settings.from_env({
        "PROVISIONING_API_HOST": "0.0.0.0", "PROVISIONING_API_PORT": "9000",
        "PROVISIONING_API_MAX_BODY_BYTES": "2048",
        "PROVISIONING_OIDC_ISSUER": "https://login.microsoftonline.com/t/v2.0",
        "PROVISIONING_OIDC_AUDIENCE": "api://provisioning"})
    assert (settings.api_host, settings.api_port, settings.api_max_body_bytes) == (
        "0.0.0.0", 9000, 2048)
    assert settings.oidc_audience == "api://provisioning"


@pytest.mark.parametrize("argv", [
    ["token", "create", "--name", "ci", "--role", "admin"],
    ["token", "create", "--name", "has space", "--role", "reader"],
    ["token", "create", "--name", "ci", "--role", "reader", "--expires-in", "0"],
    ["token", "create", "--role", "reader"],
    ["serve", "--port", "http"],
    ["serve", "--port", "70000"],
], ids=" ".join)
def test_usage_errors_exit_2_naming_the_argument(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err
    assert "Traceback" not in err


def test_the_parser_checks_token_names_and_roles_as_the_api_does() -> None:
    """worker.cli.common spells the token name rule and the role labels again (the parser
    must not load the HTTP API); they are the API's."""
    from worker.cli.common import API_ROLES, TOKEN_NAME
    from worker.http.auth import Role
    from worker.http.auth.tokens import NAME

    assert tuple(role.label for role in Role) == API_ROLES
    assert TOKEN_NAME.pattern == NAME.pattern
