"""Store v2 settings and URLs: a cluster store needs its own broker; shard counts."""

from __future__ import annotations

import pytest

from worker.errors import ConfigurationError
from worker.keys import Keys, shard_tags
from worker.settings import Settings
from worker.store.connect import is_cluster


def test_a_cluster_url_is_recognised() -> None:
    assert is_cluster("redis+cluster://127.0.0.1:7000")
    assert is_cluster("rediss+cluster://node:7000")
    assert not is_cluster("redis://127.0.0.1:6379/0")


def test_a_cluster_store_needs_a_broker_of_its_own() -> None:
    with pytest.raises(ConfigurationError, match="PROVISIONING_BROKER_URL: must be set"):
        Settings.from_env({"PROVISIONING_REDIS_URL": "redis+cluster://127.0.0.1:7000"})
    settings = Settings.from_env({"PROVISIONING_REDIS_URL": "redis+cluster://127.0.0.1:7000",
                                  "PROVISIONING_BROKER_URL": "amqp://guest@localhost//"})
    assert settings.broker == "amqp://guest@localhost//"


@pytest.mark.parametrize("value", ["0", "16385"])
def test_the_shard_count_is_checked(value: str) -> None:
    with pytest.raises(ConfigurationError, match="PROVISIONING_STORE_SHARDS"):
        Settings.from_env({"PROVISIONING_STORE_SHARDS": value})


@pytest.mark.parametrize("name", ["DEDUPE_WINDOW_SECONDS", "DELETED_RETENTION_SECONDS",
                                  "OUTBOX_MAX_ENTRIES"])
def test_windows_and_caps_must_be_positive(name: str) -> None:
    with pytest.raises(ConfigurationError, match=f"PROVISIONING_{name}: must be positive"):
        Settings.from_env({f"PROVISIONING_{name}": "0"})


def test_every_shard_has_its_own_slot_range_and_every_key_of_a_record_its_tag() -> None:
    from redis.crc import key_slot

    tags = shard_tags(16)
    slots = [key_slot(tag.encode()) for tag in tags]
    assert slots == sorted(slots)
    assert [slot * 16 // 16384 for slot in slots] == list(range(16))
    keys = Keys("p")
    record = "6f1c0000-0000-4000-8000-000000000001"
    names = [keys.record(record), keys.window(record), keys.inbox(record), keys.lease(record),
             keys.claimed(record), keys.pending(keys.shard(record)),
             keys.outbox(keys.shard(record))]
    assert len({key_slot(name.encode()) for name in names}) == 1


def test_migrate_refuses_a_cluster_url(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from worker import bootstrap
    from worker.cli import main

    monkeypatch.setenv("PROVISIONING_REDIS_URL", "redis+cluster://127.0.0.1:7000")
    monkeypatch.setenv("PROVISIONING_BROKER_URL", "redis://127.0.0.1:6379/0")
    bootstrap.reset()
    try:
        assert main(["migrate", "--dry-run"]) == 2
    finally:
        bootstrap.reset()
    assert "migrate: a v1 store is on one Redis" in capsys.readouterr().err


def test_the_format_stamp_is_written_once_and_checked() -> None:
    import fakeredis

    from worker.store import stamp

    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    keys = Keys("p")
    stamp.ensure(client, keys, stamp=False)  # a new store: read-only commands write nothing
    assert client.keys("*") == []
    stamp.ensure(client, keys)
    assert client.hgetall(keys.meta) == {"format": "2", "shards": "16"}
    with pytest.raises(ConfigurationError, match="written with 16 shards, not 4"):
        stamp.ensure(client, Keys("p", 4), stamp=False)
    client.hset(keys.meta, "format", "3")
    with pytest.raises(ConfigurationError, match="is format 3"):
        stamp.ensure(client, keys)


def test_read_only_commands_refuse_a_v1_store(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import fakeredis

    from worker import bootstrap
    from worker.cli import main
    from worker.store.redis import RedisStateStore

    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    client.sadd("provisioning:idx:all", "6f1c0000-0000-4000-8000-000000000001")
    monkeypatch.setattr(bootstrap, "build_store",
                        lambda settings: RedisStateStore(client, keys=Keys()))
    assert main(["list"]) == 2
    assert "format 1; stop the workers and run `provisioning migrate`" in \
        capsys.readouterr().err
    assert client.keys("provisioning:meta") == []
