"""``provisioning health``: the store, the broker, beat's heartbeat, the failed tasks."""

from __future__ import annotations

import argparse
import json
import sys

from worker import bootstrap
from worker.cli.common import FAILED, OK
from worker.cli.logs import quiet_logs
from worker.cli.parser import HEALTH_CHECKS
from worker.ops.health import run_checks, summary


def cmd_health(args: argparse.Namespace) -> int:
    quiet_logs()
    settings = bootstrap.current_settings()
    client = bootstrap.redis_client(settings, probe=True)
    try:
        checks = run_checks(settings, client, args.check or HEALTH_CHECKS)
    finally:
        client.close()
    if args.json:
        print(json.dumps(summary(checks), indent=2))
    else:
        for check in checks:
            print(check.line())
    sys.stdout.flush()
    for check in checks:
        if not check.ok:
            print(f"provisioning: health: {check.name}: {check.detail}", file=sys.stderr)
    return OK if all(check.ok for check in checks) else FAILED
