"""``provisioning token create|list|revoke`` and ``provisioning serve`` (wired into
worker/cli.py).

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
from typing import Any

OK, FAILED = 0, 1
DAY = 86400.0


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if not 0 < value <= 3650:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 3650, not {text}")
    return value


def _role(text: str) -> Any:
    from worker.http.auth import Role

    try:
        return Role.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _name(text: str) -> str:
    from worker.http.auth import valid_name

    try:
        return valid_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return int(text)


def add_parser(commands: Any) -> None:
    """Add ``token`` and ``serve`` to the CLI's subparsers."""
    token = commands.add_parser("token", help="API tokens of the HTTP API: create, list, revoke")
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="a new token; printed once, as the last line",
                                description="Only a hash of the token is stored.")
    create.add_argument("--name", required=True, type=_name, metavar="NAME",
                        help="who holds it: the name its actions are audited under")
    create.add_argument("--role", required=True, type=_role, metavar="ROLE",
                        help="reader, submitter or operator")
    create.add_argument("--expires-in", type=_days, metavar="DAYS",
                        help="days until it expires (default: never)")
    listing = actions.add_parser("list", help="names, roles, created, expires, last used")
    listing.add_argument("--json", action="store_true")
    revoke = actions.add_parser("revoke", help="revoke a token (refused at its next request)")
    revoke.add_argument("name", metavar="NAME")

    serve = commands.add_parser(
        "serve", help="run the HTTP API (SPEC §8)",
        description="Serves until SIGTERM or Ctrl-C, then finishes the requests in flight "
                    "(at most PROVISIONING_API_SHUTDOWN_TIMEOUT seconds).")
    serve.add_argument("--host", metavar="HOST",
                       help="address to listen on (default PROVISIONING_API_HOST)")
    serve.add_argument("--port", type=_port, metavar="PORT",
                       help="port (default PROVISIONING_API_PORT)")
    serve.add_argument("--proxy-headers", action="store_true",
                       help="behind a TLS-terminating proxy: take the client address and "
                            "scheme from X-Forwarded-For and X-Forwarded-Proto")
    serve.add_argument("--forwarded-allow-ips", metavar="IPS", default="127.0.0.1",
                       help="proxies trusted for those headers (comma-separated, or *; "
                            "default 127.0.0.1)")


def run(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return serve(args)
    return token(args)


def _tokens() -> Any:
    from worker import bootstrap
    from worker.http.auth import RedisTokenStore
    from worker.keys import Keys

    settings = bootstrap.current_settings()
    return RedisTokenStore(bootstrap.redis_client(settings), Keys(settings.key_prefix))


def token(args: argparse.Namespace) -> int:
    from worker.http.auth import TokenExists

    tokens = _tokens()
    action = args.token_command
    if action == "create":
        try:
            created = tokens.create(args.name, args.role, expires_in=(
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


def serve(args: argparse.Namespace) -> int:
    """Run the API with uvicorn in this process until SIGTERM or SIGINT."""
    import structlog
    import uvicorn

    from worker import bootstrap
    from worker.http.app import build_context, create_app
    from worker.logs import configure
    from worker.settings import redact_url

    settings = bootstrap.current_settings()
    configure(settings)  # the CLI quietened logs to warnings; a server logs its requests
    host = args.host or settings.api_host
    port = settings.api_port if args.port is None else args.port
    app = create_app(build_context(settings))
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
