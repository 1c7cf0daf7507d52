"""Shared fixtures. Integration tests get a Redis server of their own on a free loopback
port (started from the ``redis-server`` on the PATH) and skip with a reason when there is
none, except under CI=true, where they fail instead."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from worker import tracing
from worker.emulators import embedded
from worker.settings import BackendSettings

# Before any test module imports them: the shared store contracts' asserts are rewritten
# (tests/unit/test_retention.py imports the v2 contract before the contract modules do).
pytest.register_assert_rewrite("tests.store_contract", "tests.store_v2_contract")

IN_CI = os.environ.get("CI", "").lower() == "true"
_databases = itertools.count(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("faults", "the fault suite (tests/faults)")
    group.addoption("--fault-scale", choices=("ci", "long"), default="ci",
                    help="ci: sized to finish in a few minutes (the default); long: "
                         "ten times the events, kills and inputs, by hand")
    group.addoption("--fault-report", metavar="PATH", default=None,
                    help="also write every scenario's figures to PATH as JSON")


@pytest.fixture(autouse=True, scope="session")
def _logs_to_stderr() -> None:
    """structlog's default prints to stdout; the project's logs always go to stderr."""
    from worker.logs import configure
    from worker.settings import Settings

    configure(Settings(log_format="console", log_level="INFO"))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The base URL of a redis-server started for this test session (db 0)."""
    try:
        server = embedded.start("redis-server")
    except RuntimeError as exc:
        if IN_CI:
            pytest.fail(f"integration tests need redis-server under CI=true: {exc}")
        pytest.skip(f"no redis-server to start: {exc}")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A Redis Cluster of 3 masters started for this session (tests/cluster.py)."""
    from tests.cluster import RedisCluster

    try:
        cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    except (RuntimeError, OSError) as exc:
        if IN_CI:
            pytest.fail(f"cluster tests need redis-server and redis-cli under CI=true: {exc}")
        pytest.skip(f"no Redis Cluster to start: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """A database of our own server, emptied first; only this session ever wrote to it."""
    number = next(_databases) % 16 or 1
    url = redis_server.rsplit("/", 1)[0] + f"/{number}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


class Kicks:
    """Records the drain kicks a Service sends (instead of Celery messages)."""

    def __init__(self) -> None:
        self.records: list[str] = []

    def __call__(self, record_id: str) -> None:
        self.records.append(record_id)


@pytest.fixture
def emulator() -> object:
    from worker.emulators import Emulator

    return Emulator(seed=7)


@pytest.fixture
def kicks() -> Kicks:
    return Kicks()


@pytest.fixture
def memory_service(emulator: object, kicks: Kicks) -> object:
    """A Service on the in-memory stores with the emulator as its backends (no servers)."""
    import httpx

    from worker.backends import Backends
    from worker.emulators import Emulator
    from worker.service import Service
    from worker.settings import Settings
    from worker.store.failed import MemoryFailedStore
    from worker.store.memory import MemoryStateStore

    assert isinstance(emulator, Emulator)
    settings = Settings(
        backends=BackendSettings(
            provisioner_url="http://backends.test", gatekeeper_url="http://backends.test",
            calling_test_url="http://backends.test", backoff_base=0.0, backoff_cap=0.0),
        retry_base_seconds=0.0, retry_cap_seconds=0.0, max_retries=2,
    )
    client = httpx.Client(transport=emulator.transport())
    backends = Backends(settings.backends, client, sleep=lambda _: None)
    return Service(settings, MemoryStateStore(), MemoryFailedStore(), backends, kick=kicks)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Spans recorded in memory for the test (the SDK provider installed, then removed)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)
        provider.shutdown()
