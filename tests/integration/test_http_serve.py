"""The HTTP API as it runs: a real ``provisioning serve`` process, a real ``celery
worker`` and Redis. A batch POSTed over HTTP reaches Running; a replay through the API is
audited under the token's name; a revoked token fails at its next request; SIGTERM lets
a request in flight finish; behind a proxy, links keep the client's scheme."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.factories import event, new_id, provision
from tests.integration.http_server import serving
from tests.integration.workers import running_cluster

pytestmark = pytest.mark.integration
BATCH = {"content-type": "application/cloudevents-batch+json"}


def create_token(cluster: Any, name: str, role: str) -> str:
    done = cluster.provisioning("token", "create", "--name", name, "--role", role)
    assert done.returncode == 0, done.stderr
    token: str = done.stdout.strip().splitlines()[-1]  # the last line, printed once
    assert token.startswith("pst_")
    return token


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_batch_posted_over_http_reaches_running(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with running_cluster(redis_url, tmp_path, request) as cluster:
        cluster.start_worker()
        token = create_token(cluster, "onboarding", "submitter")
        with serving(cluster.env, tmp_path) as api:
            records = [new_id() for _ in range(20)]
            batch = [provision(record_id, new_id()) for record_id in records]
            batch.insert(5, {"specversion": "1.0", "id": "broken"})
            answer = httpx.post(f"{api.url}/api/v1/events", headers={**auth(token), **BATCH},
                                content=json.dumps(batch), timeout=30)
            assert answer.status_code == 202, answer.text
            assert answer.json()["accepted"] == 20
            assert [r["index"] for r in answer.json()["refused"]] == [5]
            for record_id in records:
                cluster.wait_status(record_id, "Running")
            shown = httpx.get(f"{api.url}/api/v1/records/{records[0]}", headers=auth(token),
                              timeout=10)
            assert shown.json()["statuscode@OData.Community.Display.V1.FormattedValue"] == (
                "Running")
            seen: list[str] = []
            url = f"{api.url}/api/v1/records?limit=7"
            while url:
                page = httpx.get(url, headers=auth(token), timeout=10).json()
                seen += [row["msdyn_ocprovisioningstateid"] for row in page["value"]]
                url = page.get("@odata.nextLink", "")
            assert seen == sorted(records)
        listed = cluster.provisioning("token", "list", "--json")
        [entry] = json.loads(listed.stdout)
        assert entry["name"] == "onboarding" and entry["last_used"] is not None
        assert token not in listed.stdout
        assert token.rsplit("_", 1)[1] not in (tmp_path / "serve-0.log").read_text()


def test_a_replay_through_the_api_is_audited_under_the_token_name(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with running_cluster(redis_url, tmp_path, request) as cluster:
        cluster.start_worker()
        record_id = new_id()
        cluster.send(event("deprovision.requested", record_id))  # no such record yet: a failed task
        [entry] = cluster.wait_for(cluster.failed, "the failed-task entry")
        cluster.submit([provision(record_id, new_id())])
        cluster.wait_status(record_id, "Running")
        token = create_token(cluster, "ana", "operator")
        with serving(cluster.env, tmp_path) as api:
            answer = httpx.post(f"{api.url}/api/v1/failed/{entry.id}/replay",
                                headers={**auth(token), "X-Operator": "mallory"}, timeout=30)
            assert answer.status_code == 202, answer.text
            assert answer.json() == {"replayed": [entry.id]}
            cluster.wait_status(record_id, "Deprovisioned")
            cluster.wait_for(lambda: not cluster.failed(), "the entry to be resolved")
            audit = httpx.get(f"{api.url}/api/v1/audit", headers=auth(token), timeout=10)
            actions = [(a["operator"], a["action"]) for a in audit.json()["value"]]
            assert actions == [("worker", "resolved"), ("ana", "replay")]
        cli = cluster.provisioning("failed", "audit", "--json")
        assert [line["operator"] for line in json.loads(cli.stdout)] == ["ana", "worker"]


def test_a_revoked_token_fails_on_its_next_request(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with running_cluster(redis_url, tmp_path, request) as cluster:
        token = create_token(cluster, "dashboard", "reader")
        with serving(cluster.env, tmp_path) as api, httpx.Client(
                base_url=api.url, headers=auth(token), timeout=10) as client:
            assert client.get("/api/v1/records").status_code == 200
            revoked = cluster.provisioning("token", "revoke", "dashboard")
            assert revoked.returncode == 0, revoked.stderr
            answer = client.get("/api/v1/records")  # the same kept-alive connection
            assert answer.status_code == 401
            assert answer.headers["www-authenticate"].startswith("Bearer")
            assert answer.headers["content-type"] == "application/problem+json"
        again = cluster.provisioning("token", "revoke", "dashboard")
        assert again.returncode == 1
        assert "no token named 'dashboard'" in again.stderr


def test_sigterm_finishes_the_request_in_flight_then_exits_0(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with running_cluster(redis_url, tmp_path, request) as cluster:
        token = create_token(cluster, "onboarding", "submitter")
        with serving(cluster.env, tmp_path) as api:
            answers: list[httpx.Response] = []
            client = redis.Redis.from_url(redis_url)
            # Redis holds every write for 2 s: the POST below is in flight meanwhile.
            client.execute_command("CLIENT", "PAUSE", "2000", "WRITE")
            poster = threading.Thread(target=lambda: answers.append(httpx.post(
                f"{api.url}/api/v1/events", headers={**auth(token), **BATCH},
                content=json.dumps([provision(new_id(), new_id())]), timeout=30)))
            poster.start()
            time.sleep(0.5)
            stopped_at = time.monotonic()
            code = api.stop()
            poster.join(30)
            client.close()
            assert time.monotonic() - stopped_at >= 1.0  # it waited for the request
            assert code == 0, api.tail()
            [answer] = answers
            assert answer.status_code == 202
            assert answer.json()["accepted"] == 1
            assert '"api_stopped"' in api.tail()


def test_behind_a_tls_proxy_links_keep_the_https_scheme(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with running_cluster(redis_url, tmp_path, request) as cluster:
        cluster.start_worker()
        records = [new_id() for _ in range(2)]
        cluster.submit([provision(record_id, new_id()) for record_id in records])
        for record_id in records:
            cluster.wait_status(record_id, "Running")
        token = create_token(cluster, "dashboard", "reader")
        with serving(cluster.env, tmp_path, args=["--proxy-headers"]) as api:
            page = httpx.get(f"{api.url}/api/v1/records?limit=1", timeout=10, headers={
                **auth(token), "X-Forwarded-Proto": "https", "Host": "provisioning.example"})
            assert page.json()["@odata.nextLink"].startswith(
                "https://provisioning.example/api/v1/records?")
            assert uuid.UUID(page.json()["value"][0]["msdyn_ocprovisioningstateid"])
