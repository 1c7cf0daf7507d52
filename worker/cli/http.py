"""``provisioning token create|list|revoke`` and ``provisioning serve``: the HTTP API's
commands (SPEC §8; their arguments are in ``worker.cli.parser``).

Exit codes as the rest of the CLI: 0 success; 1 the command ran but something was refused
or not found (a name that has a token, an unknown name); 2 a usage error. ``token create``
prints the token once, as the last line of its output; nothing else ever shows it.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys

import structlog
import uvicorn

from worker import bootstrap
from worker.cli.common import FAILED, OK
from worker.cli.logs import quiet_logs
from worker.console import console_mount
from worker.http.app import build_context, create_app
from worker.http.auth import RedisTokenStore, Role, TokenExists
from worker.keys import Keys
from worker.logs import configure
from worker.settings import redact_url

DAY = 86400.0


def _tokens() -> RedisTokenStore:
    settings = bootstrap.current_settings()
    return RedisTokenStore(bootstrap.redis_client(settings),
                           Keys(settings.key_prefix, settings.store_shards))


def cmd_token(args: argparse.Namespace) -> int:
    quiet_logs()
    tokens = _tokens()
    action = args.token_command
    if action == "create":
        try:
            created = tokens.create(args.name, Role.parse(args.role), expires_in=(
                None if args.expires_in is None else args.expires_in * DAY))
        except TokenExists as exc:
            print(f"provisioning: {exc}", file=sys.stderr)
            return FAILED
        shown = created.entry.to_json()
        print(f"created token {shown['name']} ({shown['role']}), expires "
              f"{shown['expires'] or 'never'}; it is shown once, below:")
        print(created.token)
        return OK
    if action == "revoke":
        if not tokens.revoke(args.name):
            print(f"provisioning: no token named {args.name!r}", file=sys.stderr)
            return FAILED
        print(f"revoked token {args.name}")
        return OK
    entries = [entry.to_json() for entry in tokens.entries()]
    if args.json:
        print(json.dumps(entries, indent=2))
        return OK
    if not entries:
        print("no tokens")
        return OK
    print(f"{'NAME':<24}  {'ROLE':<9}  {'CREATED':<19}  {'EXPIRES':<19}  LAST USED")
    for e in entries:
        print(f"{e['name']:<24}  {e['role']:<9}  {e['created'][:19]:<19}  "
              f"{(e['expires'] or 'never')[:19]:<19}  {(e['last_used'] or 'never')[:19]}")
    return OK


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the API with uvicorn in this process until SIGTERM or SIGINT."""
    settings = bootstrap.current_settings()
    configure(settings)  # the CLI quietens logs to warnings; a server logs its requests
    host = args.host or settings.api_host
    port = settings.api_port if args.port is None else args.port
    api = build_context(settings)
    app = create_app(api, mounts=[console_mount(api)])
    config = uvicorn.Config(
        app, host=host, port=port, proxy_headers=args.proxy_headers,
        forwarded_allow_ips=args.forwarded_allow_ips if args.proxy_headers else None,
        log_config=None, access_log=False, server_header=False, lifespan="on",
        timeout_graceful_shutdown=math.ceil(settings.api_shutdown_timeout))
    log = structlog.get_logger("worker.http")
    log.info("api_serving", host=host, port=port, proxy_headers=args.proxy_headers,
             store=redact_url(settings.redis_url), oidc_issuer=settings.oidc_issuer)
    # uvicorn finishes the requests in flight on SIGTERM, then raises the signal again
    # with the handler it found: this one, so that the process ends here with exit 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.Server(config).run()
    log.info("api_stopped")
    return OK
