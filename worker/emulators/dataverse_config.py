"""The Dataverse emulator's configuration from the environment (``python -m
worker.emulators`` and docker compose set EMULATOR_DATAVERSE_*)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def options_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Configured by EMULATOR_DATAVERSE_BUDGET, _WINDOW_SECONDS, _TOKEN_SECONDS,
    _LATENCY_MS, _TENANT_ID, _CLIENT_ID, _CLIENT_SECRET, _CLIENT_CERTIFICATE (a PEM file; all
    optional); ValueError names a variable whose value is wrong."""
    values: dict[str, Any] = {}
    for name, option, parse in (
        ("EMULATOR_DATAVERSE_BUDGET", "request_budget", int),
        ("EMULATOR_DATAVERSE_WINDOW_SECONDS", "window_seconds", float),
        ("EMULATOR_DATAVERSE_TOKEN_SECONDS", "token_seconds", float),
        ("EMULATOR_DATAVERSE_LATENCY_MS", "latency_ms", float),
        ("EMULATOR_DATAVERSE_TENANT_ID", "tenant_id", str),
        ("EMULATOR_DATAVERSE_CLIENT_ID", "client_id", str),
        ("EMULATOR_DATAVERSE_CLIENT_SECRET", "client_secret", str),
    ):
        raw = environ.get(name, "").strip()
        if raw:
            try:
                values[option] = parse(raw)
            except ValueError as exc:
                raise ValueError(f"{name}={raw!r} is not a number") from exc
    certificate = environ.get("EMULATOR_DATAVERSE_CLIENT_CERTIFICATE", "").strip()
    if certificate:
        with open(certificate, "rb") as file:
            values["client_certificates"] = (file.read(),)
    return values
