"""Every deployment file is validated without a Docker engine or a cluster: the compose file
against the Compose Specification's schema (check-jsonschema's vendored copy), the
Kubernetes manifests against the Kubernetes schemas (kubernetes-validate, strict), the
systemd units with ``systemd-analyze verify`` where it exists and by their keys always,
and the Dockerfile by its instructions. Then what docs/deploy.md promises of them."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from worker.settings import PREFIX, Settings, setting_names

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
KUBERNETES = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
ENV_EXAMPLE = DEPLOY / "systemd" / "provisioning.env.example"
MONITORING = {DEPLOY / "grafana" / "provisioning-dashboard.json",  # tests/unit/test_monitoring.py
              DEPLOY / "prometheus" / "alerts.yml", DEPLOY / "prometheus" / "alerts.test.yml"}
KUBERNETES_VERSION = "1.30.0"  # the oldest minor still in upstream support when written
SETTINGS = {PREFIX + name.upper() for name in setting_names()}
METRICS_PORT = Settings().metrics_port


def soft_shutdown_default() -> float:
    return Settings().soft_shutdown_timeout


def test_every_file_in_deploy_is_validated_here() -> None:
    validated = {*KUBERNETES, *UNITS, ENV_EXAMPLE, *MONITORING}
    present = {path for path in DEPLOY.rglob("*") if path.is_file()}
    assert present == validated, "a new file in deploy/ needs a test in this module"


# -- docker-compose.yml ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def test_compose_file_matches_the_compose_specification() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(COMPOSE)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok -- validation done" in done.stdout


def test_compose_schema_check_catches_a_mistake(tmp_path: Path) -> None:
    """The check above is a real one: a misspelt key fails it."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text(encoding="utf-8").replace("healthcheck:",
                                                                  "helthcheck:", 1))
    done = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(broken)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1


def test_compose_runs_redis_worker_one_beat_the_api_flower_and_the_emulator(
    compose: dict[str, Any],
) -> None:
    assert set(compose["services"]) == {"redis", "worker", "beat", "api", "flower", "emulator"}
    assert compose["services"]["beat"]["deploy"]["replicas"] == 1


def test_compose_redis_is_append_only_noeviction_on_a_volume_with_a_healthcheck(
    compose: dict[str, Any],
) -> None:
    redis = compose["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    [volume] = redis["volumes"]
    assert volume.split(":")[0] in compose["volumes"]
    assert volume.endswith(":/data")
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_compose_wires_every_service_by_environment(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("worker", "beat"):
        env = services[name]["environment"]
        assert set(env) <= SETTINGS
        assert env["PROVISIONING_REDIS_URL"] == "redis://redis:6379/0"
        for backend in ("PROVISIONER", "GATEKEEPER", "CALLING_TEST"):
            assert env[f"PROVISIONING_{backend}_URL"] == "http://emulator:8080"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["flower"]["environment"]["CELERY_BROKER_URL"] == (
        services["worker"]["environment"]["PROVISIONING_BROKER_URL"])


def test_compose_gives_the_worker_its_soft_shutdown_and_probes(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    soft = float(worker["environment"]["PROVISIONING_SOFT_SHUTDOWN_TIMEOUT"])
    assert seconds(worker["stop_grace_period"]) > soft
    assert "/healthz" in " ".join(worker["healthcheck"]["test"])
    assert any(port.endswith(f":{METRICS_PORT}") for port in worker["ports"])
    assert compose["services"]["beat"]["healthcheck"]["test"][1:] == [
        "provisioning", "health", "--check", "beat"]


def test_compose_serves_the_api_ready_on_the_store_and_stopping_gently(
    compose: dict[str, Any],
) -> None:
    api = compose["services"]["api"]
    assert api["command"][:2] == ["provisioning", "serve"]
    port = api["command"][api["command"].index("--port") + 1]
    assert f"127.0.0.1:{port}:{port}" in api["ports"]
    assert set(api["environment"]) <= SETTINGS
    assert api["environment"] == compose["services"]["worker"]["environment"]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert f"http://127.0.0.1:{port}/readyz" in " ".join(api["healthcheck"]["test"])
    assert seconds(api["stop_grace_period"]) > Settings().api_shutdown_timeout


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return float(match.group(1))


# -- deploy/kubernetes -----------------------------------------------------------------------


def resources() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in KUBERNETES:
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document:
                yield f"{path.name}:{document['kind']}/{document['metadata']['name']}", document


RESOURCES = dict(resources())


@pytest.mark.parametrize("name", list(RESOURCES))
def test_kubernetes_manifest_matches_the_kubernetes_schema(name: str) -> None:
    kubernetes_validate.validate(RESOURCES[name], KUBERNETES_VERSION, strict=True)


def test_kubernetes_schema_check_catches_a_mistake() -> None:
    broken = json.loads(json.dumps(RESOURCES["worker.yaml:Deployment/provisioning-worker"]))
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def kind(kind: str, name: str) -> dict[str, Any]:
    [resource] = [r for r in RESOURCES.values()
                  if r["kind"] == kind and r["metadata"]["name"] == name]
    return resource


def config_map() -> dict[str, str]:
    data: dict[str, str] = kind("ConfigMap", "provisioning-config")["data"]
    return data


def test_worker_deployment_probes_and_grace_period() -> None:
    pod = kind("Deployment", "provisioning-worker")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert {"name": "metrics", "containerPort": METRICS_PORT,
            "protocol": "TCP"} in container["ports"]
    soft = float(config_map()["PROVISIONING_SOFT_SHUTDOWN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] > soft + 10
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["REMAP_SIGTERM"] == "SIGQUIT"
    assert env["PROVISIONING_METRICS_ADDRESS"] == "0.0.0.0"
    assert container["command"][:4] == ["celery", "-A", "worker.app", "worker"]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_beat_runs_one_replica_and_is_recreated() -> None:
    beat = kind("Deployment", "provisioning-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    [container] = beat["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["exec"]["command"] == [
        "provisioning", "health", "--check", "beat"]
    assert container["command"][:4] == ["celery", "-A", "worker.app", "beat"]


def test_the_disruption_budget_covers_the_worker_pods() -> None:
    budget = kind("PodDisruptionBudget", "provisioning-worker")
    worker = kind("Deployment", "provisioning-worker")
    assert budget["spec"]["selector"] == worker["spec"]["selector"]
    assert budget["spec"]["minAvailable"] < worker["spec"]["replicas"]


def test_configuration_comes_from_the_config_map_and_the_secret() -> None:
    secret = kind("Secret", "provisioning-secrets")
    assert set(config_map()) <= SETTINGS
    assert set(secret["stringData"]) <= SETTINGS
    assert "PROVISIONING_REDIS_URL" in secret["stringData"]
    assert not any(key.endswith("_URL") and "@" in value
                   for key, value in config_map().items()), "passwords belong in the Secret"
    for name in ("provisioning-worker", "provisioning-beat"):
        [container] = kind("Deployment", name)["spec"]["template"]["spec"]["containers"]
        assert container["envFrom"] == [{"configMapRef": {"name": "provisioning-config"}},
                                        {"secretRef": {"name": "provisioning-secrets"}}]


def test_the_api_deployment_serves_behind_a_proxy_with_probes_and_a_service() -> None:
    api = kind("Deployment", "provisioning-api")
    pod = api["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"][:2] == ["provisioning", "serve"]
    assert "--proxy-headers" in container["command"]
    port = int(container["command"][container["command"].index("--port") + 1])
    assert {"name": "http", "containerPort": port, "protocol": "TCP"} in container["ports"]
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["envFrom"] == [{"configMapRef": {"name": "provisioning-config"}},
                                    {"secretRef": {"name": "provisioning-secrets"}}]
    pause = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pause + Settings().api_shutdown_timeout
    assert pod["securityContext"]["runAsNonRoot"] is True
    service = kind("Service", "provisioning-api")
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    worker = kind("Deployment", "provisioning-worker")
    assert service["spec"]["selector"] != worker["spec"]["selector"]["matchLabels"]


def test_the_metrics_service_selects_the_worker_pods() -> None:
    service = kind("Service", "provisioning-worker-metrics")
    worker = kind("Deployment", "provisioning-worker")
    assert service["spec"]["selector"] == worker["spec"]["selector"]["matchLabels"]


# -- deploy/systemd --------------------------------------------------------------------------


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text(encoding="utf-8"))
    return parser


@pytest.mark.parametrize("path", UNITS, ids=lambda path: path.name)
def test_systemd_unit_has_the_required_keys(path: Path) -> None:
    parsed = unit(path)
    assert parsed["Unit"]["Description"]
    service = parsed["Service"]
    assert service["Type"] == "simple"
    assert service["User"] == "provisioning"
    assert service["ExecStart"].startswith("/opt/provisioning/venv/bin/")
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert parsed["Install"]["WantedBy"] == "multi-user.target"


def test_the_worker_unit_stops_gently_and_long_enough() -> None:
    service = unit(DEPLOY / "systemd" / "provisioning-worker.service")["Service"]
    assert service["KillMode"] == "mixed"  # SIGTERM to celery's main process only
    assert float(service["TimeoutStopSec"]) > soft_shutdown_default() + 10
    assert service["ExecStart"].split()[1:5] == ["-A", "worker.app", "worker", "--loglevel"]
    assert service["EnvironmentFile"] == "/etc/provisioning/provisioning.env"
    assert "Environment" in service


def test_the_beat_unit_runs_beat() -> None:
    service = unit(DEPLOY / "systemd" / "provisioning-beat.service")["Service"]
    assert service["ExecStart"].split()[1:4] == ["-A", "worker.app", "beat"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (the key checks above still ran)")
def test_systemd_analyze_verifies_every_unit(tmp_path: Path) -> None:
    """``systemd-analyze verify`` wants the executables to exist: the units are checked with
    this checkout's virtualenv in place of /opt/provisioning/venv."""
    venv_bin = str(Path(sys.executable).parent) + "/"
    for path in UNITS:
        text = path.read_text(encoding="utf-8").replace("/opt/provisioning/venv/bin/", venv_bin)
        (tmp_path / path.name).write_text(text, encoding="utf-8")
    done = subprocess.run(["systemd-analyze", "verify", *sorted(map(str, tmp_path.iterdir()))],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr  # unknown keys are only warnings


def test_the_environment_file_sets_only_known_settings() -> None:
    lines = [line for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    names = {line.split("=", 1)[0] for line in lines}
    assert names <= SETTINGS
    assert {"PROVISIONING_REDIS_URL", "PROVISIONING_METRICS_PORT"} <= names


# -- Dockerfile ------------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"^\s*#.*\n", "", text, flags=re.MULTILINE).replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1])
            for line in text.splitlines() if line.strip()]


def test_the_image_runs_the_worker_as_pid_1_and_not_as_root() -> None:
    steps = instructions()
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    base = final[0][1]
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", base), base
    [user] = [arg for op, arg in final if op == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    [cmd] = [arg for op, arg in final if op == "CMD"]
    assert json.loads(cmd)[:4] == ["celery", "-A", "worker.app", "worker"]  # exec form
    assert not [arg for op, arg in final if op == "ENTRYPOINT"]  # nothing wraps celery
    env = " ".join(arg for op, arg in final if op == "ENV")
    assert "REMAP_SIGTERM=SIGQUIT" in env
    assert "PROVISIONING_METRICS_ADDRESS=0.0.0.0" in env


def test_the_image_copies_only_the_package() -> None:
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "*" in ignore  # everything is left out but what is named
    copied = [arg for op, arg in instructions() if op == "COPY" and "--from" not in arg]
    sources = {part for arg in copied for part in arg.split()[:-1]}
    assert sources == {"pyproject.toml", "README.md", "LICENSE", "constraints.txt",
                       "statemachine", "worker"}
    for source in sources:
        assert f"!{source}" in ignore or f"!{source}/" in ignore


def test_the_image_installs_the_locked_versions() -> None:
    [install] = [arg for op, arg in instructions() if op == "RUN" and "pip install" in arg]
    assert "-c constraints.txt '.[azure]'" in install
    pins = [line for line in (ROOT / "constraints.txt").read_text(encoding="utf-8")
            .splitlines() if line and not line.startswith(("#", " "))]
    assert all("==" in pin for pin in pins), "every dependency pinned to one version"
    names = {pin.split("==")[0].lower() for pin in pins}
    assert {"celery", "kombu", "redis", "httpx", "structlog", "transitions"} <= names


# -- the settings the files above rely on -----------------------------------------------------


def test_every_file_ships_the_default_metrics_port_and_not_celery_exporters(
    compose: dict[str, Any],
) -> None:
    """9808 is celery-exporter's default: the two would collide in one pod or host."""
    assert METRICS_PORT not in (0, 9808)
    pod = kind("Deployment", "provisioning-worker")["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(METRICS_PORT)
    [port] = kind("Service", "provisioning-worker-metrics")["spec"]["ports"]
    assert port["port"] == METRICS_PORT
    assert config_map()["PROVISIONING_METRICS_PORT"] == str(METRICS_PORT)
    assert f"PROVISIONING_METRICS_PORT={METRICS_PORT}\n" in ENV_EXAMPLE.read_text()
    assert ("EXPOSE", str(METRICS_PORT)) in instructions()
    healthcheck = " ".join(compose["services"]["worker"]["healthcheck"]["test"])
    assert f"127.0.0.1:{METRICS_PORT}/healthz" in healthcheck
    deploy = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert f":{METRICS_PORT}/metrics" in deploy
    assert ":9808" not in deploy


def test_celery_soft_shutdown_follows_the_setting() -> None:
    from worker.app import celery_config

    config = celery_config(Settings(soft_shutdown_timeout=7.5))
    assert config["worker_soft_shutdown_timeout"] == 7.5
    assert config["worker_enable_soft_shutdown_on_idle"] is False
    assert config["worker_send_task_events"] is True  # Flower and celery-exporter see tasks
    assert config["task_send_sent_event"] is True


@pytest.mark.parametrize(("variable", "value", "problem"), [
    ("PROVISIONING_METRICS_PORT", "70000", "must be a port number"),
    ("PROVISIONING_METRICS_PORT", "-1", "must be a port number"),
    ("PROVISIONING_SOFT_SHUTDOWN_TIMEOUT", "-1", "must not be negative"),
    ("PROVISIONING_HEALTH_FAILED_MAX", "-5", "must not be negative"),
    ("PROVISIONING_HEALTH_BEAT_MAX_AGE", "0", "must be positive"),
    ("PROVISIONING_HEALTH_TIMEOUT", "-2", "must be positive"),
])
def test_a_bad_operations_setting_is_named(variable: str, value: str, problem: str) -> None:
    from worker.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=f"{variable}: {problem}"):
        Settings.from_env({variable: value})


def test_operations_settings_are_read_from_the_environment() -> None:
    settings = Settings.from_env({
        "PROVISIONING_METRICS_PORT": "0", "PROVISIONING_METRICS_ADDRESS": "0.0.0.0",
        "PROVISIONING_METRICS_DIR": "/tmp/m", "PROVISIONING_SOFT_SHUTDOWN_TIMEOUT": "12",
        "PROVISIONING_HEALTH_BEAT_MAX_AGE": "30", "PROVISIONING_HEALTH_FAILED_MAX": "7",
        "PROVISIONING_HEALTH_TIMEOUT": "1.5"})
    assert (settings.metrics_port, settings.metrics_address, settings.metrics_dir) == (
        0, "0.0.0.0", "/tmp/m")
    assert (settings.soft_shutdown_timeout, settings.health_beat_max_age,
            settings.health_failed_max, settings.health_timeout) == (12.0, 30.0, 7, 1.5)


def test_every_shipped_configuration_passes_the_settings_checks(
    compose: dict[str, Any],
) -> None:
    """What compose, Kubernetes and systemd set must start: a worker refuses bad settings."""
    shipped = [{k: str(v) for k, v in compose["x-provisioning-env"].items()}
               if "x-provisioning-env" in compose else {}]
    shipped += [{k: str(v) for k, v in (service.get("environment") or {}).items()
                 if k.startswith(PREFIX)} for service in compose["services"].values()
                if isinstance(service.get("environment"), dict)]
    shipped += [{k: str(v) for k, v in document["data"].items()}
                for path in KUBERNETES for document in yaml.safe_load_all(path.read_text())
                if document and document.get("kind") == "ConfigMap"]
    shipped.append(dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                        if line.strip() and not line.startswith("#")))
    assert len([env for env in shipped if env]) >= 3
    for env in shipped:
        Settings.from_env(env)  # raises ConfigurationError naming a bad value
