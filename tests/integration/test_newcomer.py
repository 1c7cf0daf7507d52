"""What a newcomer meets first, through the console script on a real Redis: the demo leaves
an exported Redis alone and refuses a database that holds anything; ``list`` stays light;
``submit`` shows progress on a terminal only."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

from tests.factories import provision

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).with_name("provisioning")


def environment(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONING_")}
    return {**env, **settings}


def keys(url: str) -> dict[bytes, bytes | None]:
    client = redis.Redis.from_url(url)
    try:
        return {key: client.dump(key) for key in client.keys("*")}
    finally:
        client.close()


def with_password(url: str) -> str:
    return url.replace("redis://", "redis://:s3cret@")  # our test server ignores it


def test_demo_refuses_a_database_holding_keys_and_changes_nothing(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("someone-elses", "data")
    client.close()
    before = keys(redis_url)
    done = subprocess.run(
        [str(SCRIPT), "demo", "--redis-url", redis_url], env=environment(),
        capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(f"provisioning: demo: the database at {redis_url} holds 1 "
                                  "key: the demo runs only on an empty database")
    assert done.stderr.rstrip().endswith("nothing was changed")
    assert done.stderr.count("\n") == 1
    assert keys(redis_url) == before


def test_demo_names_a_database_it_cannot_reach_without_its_password() -> None:
    done = subprocess.run(
        [str(SCRIPT), "demo", "--redis-url", "redis://:s3cret@127.0.0.1:1/0"],
        env=environment(), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("provisioning: demo: cannot reach the Redis at "
                                  "redis://:***@127.0.0.1:1/0")
    assert "s3cret" not in done.stderr


def test_demo_leaves_an_exported_redis_and_dataverse_alone(redis_url: str,
                                                           tmp_path: Path) -> None:
    """The README's command-line tour exports must not lead the demo to a real system:
    it runs on its own embedded Redis and writes nothing where the settings point."""
    client = redis.Redis.from_url(redis_url)
    client.set("production-data", "keep")
    client.close()
    before = keys(redis_url)
    done = subprocess.run(
        [str(SCRIPT), "demo", "--json"], cwd=tmp_path, env=environment(
            PROVISIONING_REDIS_URL=redis_url, PROVISIONING_BROKER_URL=redis_url,
            PROVISIONING_DATAVERSE_URL="https://contoso.crm.dynamics.com",
            PROVISIONING_EMBEDDED_REDIS="redis-server"),
        capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout)
    assert len(records) == 5
    assert "embedded Redis (redis-server)" in done.stderr
    assert keys(redis_url) == before


def test_list_on_an_empty_store_loads_neither_celery_nor_httpx(redis_url: str) -> None:
    probe = ("import sys; from worker.cli import main; code = main(['list']); "
             "print(sorted(m for m in ('celery', 'httpx', 'kombu', 'argcomplete') "
             "if m in sys.modules)); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT,
                          env=environment(PROVISIONING_REDIS_URL=redis_url),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["no records", "[]"]


def _submit(path: Path, redis_url: str, *, stderr: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), "submit", str(path)], env=environment(PROVISIONING_REDIS_URL=redis_url),
        stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=120, check=False)


def test_submit_shows_progress_on_a_terminal_and_nothing_in_a_pipe(redis_url: str,
                                                                  tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(provision(str(uuid.uuid4()))) + "\n"
                            for _ in range(2500)), encoding="utf-8")
    piped = _submit(path, redis_url, stderr=subprocess.PIPE)
    assert (piped.returncode, piped.stdout, piped.stderr) == (0, "accepted 2500, refused 0\n",
                                                              "")
    main, terminal = pty.openpty()
    try:
        shown = _submit(path, redis_url, stderr=terminal)
        os.close(terminal)
        terminal = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the terminal's other end is closed: all was read
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(main)
        if terminal != -1:
            os.close(terminal)
    assert shown.returncode == 0
    assert shown.stdout == "accepted 0, refused 0, already accepted 2500\n"
    frames = [frame.strip() for frame in drawn.decode().split("\r") if frame.strip()]
    # Drawn after each batch of 1,000 lines (at most every 0.1 s), then cleared.
    assert frames[0] == "submit: lines read: 1000"
    assert set(frames) <= {f"submit: lines read: {n}" for n in (1000, 2000, 2500)}
    assert drawn.decode().endswith("\r")
