"""``provisioning migrate [--dry-run] [--json]``: the CLI side of worker/store/migrate.py."""

from __future__ import annotations

import argparse
import json
import sys

import redis

from worker import bootstrap
from worker.errors import ConfigurationError, StoreError
from worker.keys import Keys
from worker.store.connect import is_cluster, store_client
from worker.store.migrate import MigrationReport, migrate


def cmd_migrate(args: argparse.Namespace) -> int:
    """The ``migrate`` handler."""
    settings = bootstrap.current_settings()
    if is_cluster(settings.redis_url):
        raise ConfigurationError(
            "migrate: a v1 store is on one Redis; migrate it there, then move its keys to "
            "the cluster (docs/store.md)")
    client = store_client(settings.redis_url, timeout=60)

    def progress(report: MigrationReport) -> None:
        if not args.json:
            print(f"  {report.records:,} records", file=sys.stderr, flush=True)

    try:
        report = migrate(client, Keys(settings.key_prefix, settings.store_shards),
                         dry_run=args.dry_run, progress=progress)
    except redis.RedisError as exc:
        raise StoreError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        client.close()
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    elif report.already_v2:
        print("the store is already format 2: nothing to do")
    else:
        verb = "would move" if report.dry_run else "moved"
        print(f"{verb} {report.records} records ({report.deleted_records} deleted), "
              f"{report.history_entries} history entries, {report.inbox_events} inbox events, "
              f"{report.marks} dedupe marks, {report.pending} pending, {report.retries} "
              f"retries, {report.outbox_entries} outbox entries, {report.failed_entries} "
              f"failed-task entries, {report.api_tokens} API tokens; {report.audit_lines} audit "
              "lines stay as they are")
    for problem in report.problems:
        print(f"provisioning: migrate: {problem}", file=sys.stderr)
    return 1 if report.problems else 0
