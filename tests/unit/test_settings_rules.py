"""Every setting is checked once, at start, against its rule and the cross-checks; each
problem is one line naming the variable and the rule, from ``Settings.from_env`` and from
real ``celery worker`` and ``celery beat`` processes (which exit 2 before starting)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from worker.errors import ConfigurationError
from worker.settings import PREFIX, BackendSettings, Settings, setting_names
from worker.settings_rules import rule_of

ROOT = Path(__file__).resolve().parents[2]
CELERY = Path(sys.executable).with_name("celery")


def problems(**env: str) -> list[str]:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({PREFIX + name.upper(): value for name, value in env.items()})
    return list(caught.value.problems)


def test_every_setting_has_a_rule_and_its_default_keeps_it() -> None:
    for kind, instance in ((Settings, Settings()), (BackendSettings, BackendSettings())):
        for item in fields(kind):
            if item.name == "backends":
                continue
            rule = rule_of(item)
            assert rule.meaning, item.name
            assert not rule.broken_by(getattr(instance, item.name)), item.name
    assert Settings.from_env({}) == Settings()
    assert Settings().cross_problems() == []


@pytest.mark.parametrize(("name", "value", "rule"), [
    ("lease_seconds", "-5", "must be at least 1"),
    ("lease_seconds", "0.5", "must be at least 1"),
    ("recovery_interval", "0", "must be positive"),
    ("visibility_timeout", "10", "must be more than 90"),
    ("visibility_timeout", "90", "must be more than 90"),
    ("log_level", "LOUD", "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ("log_format", "xml", "must be one of json, console"),
    ("redis_url", "notaurl", "must be a URL starting redis://"),
    ("redis_url", "http://localhost:6379/0", "must be a URL starting redis://"),
    ("broker_url", "redis://localhost:notaport/0", "must be a URL starting redis://"),
    ("provisioner_url", "ftp://backends", "must be a URL starting http:// or https://"),
    ("dataverse_url", "contoso.crm.dynamics.com", "must be a URL starting http://"),
    ("max_tries", "2", "must be at least 3"),
    ("read_timeout", "nan", "must be positive"),
    ("connect_timeout", "inf", "must be positive"),
    ("batch_records", "1.5", "must be a whole number"),
    ("drain_budget_seconds", "soon", "must be a number"),
    ("key_prefix", "   ", "must not be empty"),
    ("max_deliveries", "0", "must be at least 1"),
    ("history_limit", "-1", "must not be negative"),
    ("metrics_port", "65536", "must be a port number (0 turns it off)"),
    ("embedded_redis", "docker", "must be one of auto, redis-server, fakeredis"),
])
def test_a_value_breaking_its_rule_is_one_line_naming_variable_and_rule(
    name: str, value: str, rule: str,
) -> None:
    [problem] = problems(**{name: value})
    assert problem.startswith(f"{PREFIX}{name.upper()}: {rule}")
    assert problem.endswith(f", not {value!r}")


def test_every_problem_is_named_not_only_the_first() -> None:
    found = problems(lease_seconds="-5", recovery_interval="0", log_level="LOUD")
    assert [line.split(":")[0] for line in found] == [
        "PROVISIONING_LOG_LEVEL", "PROVISIONING_LEASE_SECONDS",
        "PROVISIONING_RECOVERY_INTERVAL"]


def test_a_password_never_appears_in_a_problem() -> None:
    [problem] = problems(redis_url="redis://:s3cret@localhost:99999/0")
    assert "s3cret" not in problem
    assert "redis://:***@localhost:99999/0" in problem
    [problem] = problems(dataverse_client_secret="x", dataverse_url="ftp://x")
    assert problem.startswith("PROVISIONING_DATAVERSE_URL")


@pytest.mark.parametrize(("env", "expected"), [
    ({"visibility_timeout": "100", "drain_budget_seconds": "60"},
     "PROVISIONING_DRAIN_BUDGET_SECONDS: must be less than the soft task time limit (60 s, "
     "from PROVISIONING_VISIBILITY_TIMEOUT), not 60"),
    ({"visibility_timeout": "1000", "drain_budget_seconds": "499"}, None),
    ({"backoff_base": "3", "backoff_cap": "1"},
     "PROVISIONING_BACKOFF_CAP: must be at least PROVISIONING_BACKOFF_BASE (3), not 1"),
    ({"retry_base_seconds": "60", "retry_cap_seconds": "30"},
     "PROVISIONING_RETRY_CAP_SECONDS: must be at least PROVISIONING_RETRY_BASE_SECONDS "
     "(60), not 30"),
])
def test_cross_checks(env: dict[str, str], expected: str | None) -> None:
    if expected is None:
        Settings.from_env({PREFIX + k.upper(): v for k, v in env.items()})
        return
    assert problems(**env) == [expected]


def test_the_visibility_timeout_always_exceeds_the_hard_task_limit_it_allows() -> None:
    for seconds in (91, 150, 600, 3600):
        settings = Settings.from_env({"PROVISIONING_VISIBILITY_TIMEOUT": str(seconds)})
        assert settings.visibility_timeout > settings.task_time_limit
        assert settings.task_soft_time_limit < settings.task_time_limit


def test_names_are_the_environment_variables() -> None:
    assert "embedded_redis" in setting_names()
    assert len(setting_names()) == len(set(setting_names()))


# -- real celery processes ------------------------------------------------------------------

BAD = {"PROVISIONING_LEASE_SECONDS": "-5", "PROVISIONING_LOG_LEVEL": "LOUD",
       "PROVISIONING_REDIS_URL": "redis://:s3cret@127.0.0.1:1/0"}


@pytest.mark.parametrize("command", [["worker", "--pool", "solo"], ["beat"]])
def test_celery_with_bad_settings_exits_2_with_one_line_per_problem_and_no_traceback(
    command: list[str], tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONING_")}
    done = subprocess.run(
        [str(CELERY), "-A", "worker.app", *command], cwd=ROOT, env={**env, **BAD},
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "provisioning: PROVISIONING_LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR, "
        "CRITICAL, not 'LOUD'",
        "provisioning: PROVISIONING_LEASE_SECONDS: must be at least 1 (it is renewed every "
        "third of it: a shorter lease is lost to one slow Redis round trip), not '-5'",
    ]
    assert "Traceback" not in done.stdout + done.stderr
    assert "s3cret" not in done.stdout + done.stderr


def test_celery_with_a_bad_mirror_setting_exits_2_naming_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONING_")}
    done = subprocess.run(
        [str(CELERY), "-A", "worker.app", "beat"], cwd=ROOT, env={
            **env, "PROVISIONING_REDIS_URL": "redis://127.0.0.1:1/0",
            "PROVISIONING_DATAVERSE_URL": "https://contoso.crm.dynamics.com"},
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines, "one line per problem"
    assert all(line.startswith("provisioning: PROVISIONING_DATAVERSE_") for line in lines)
