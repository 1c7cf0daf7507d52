"""Exceptions of the worker. The tree (each package's own root in brackets)::

    WorkerError
    ├── ConfigurationError    a setting is missing or malformed
    ├── StoreError            the record store failed (Redis unreachable, a script error)
    ├── LeaseLost             another worker took over the record's lease
    ├── RetriesExhausted      a record in Error used up its beat retries (for an operator)
    ├── PoisonMessage         a Celery message was delivered more often than allowed
    ├── InvalidArguments      a Celery message's arguments are not the task's (one event)
    ├── UndecodableMessage    a message the worker refused to decode (not JSON, e.g. pickle)
    ├── [BackendError]        worker/backends/errors.py: a backend step's request or answer
    ├── [MirrorError]         worker/dataverse/errors.py: the Dataverse mirror
    └── CommandFailed         worker/cli/common.py: a command ran, something was refused

Errors of the core (invalid events, unknown records) come from ``statemachine``
(``ProvisioningError``); backend HTTP failures are values (``worker.backends.CallResult``),
not exceptions. Third-party errors are translated where they happen (``raise … from exc``):
redis-py's in ``worker.store.translate``, httpx's in the backends and the mirror.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Root of every error the worker raises."""


class ConfigurationError(WorkerError):
    """A setting is missing or malformed; the message names the variable.

    ``problems`` holds one line per problem (the message joins them with "; ")."""

    def __init__(self, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.problems: tuple[str, ...] = problems


class StoreError(WorkerError):
    """The record store failed."""


class LeaseLost(WorkerError):
    """This worker no longer holds the record's lease."""


class RetriesExhausted(WorkerError):
    """A record in Error used up PROVISIONING_MAX_RETRIES; it stays in Error for an operator."""


class PoisonMessage(WorkerError):
    """A Celery message was delivered more often than PROVISIONING_MAX_DELIVERIES allows."""


class InvalidArguments(WorkerError):
    """A task message's arguments do not match the task (handle_event takes one event)."""


class UndecodableMessage(WorkerError):
    """A message the worker refused to decode: only JSON is accepted, never pickle."""
