"""Exceptions of the backends' client. The tree (under ``worker.errors.WorkerError``)::

    BackendError
     ├── BackendNotConfigured  a step's base URL is not set      -> error_class "NotConfigured"
     ├── InvalidResponseError  a success status with a bad body  -> error_class "InvalidResponse"
     └── InvalidCallError      a BackendCall lacking a field its step needs (a bug; raised)

Only :class:`InvalidCallError` leaves ``Backends.call()``; the others become
``CallResult(ok=False)``: HTTP failures are values, not exceptions.
"""

from __future__ import annotations

from worker.errors import WorkerError


class BackendError(WorkerError):
    """Root of the backends' exceptions."""


class BackendNotConfigured(BackendError):
    """The base URL of the backend a step needs is not configured."""


class InvalidResponseError(BackendError):
    """A success status whose body is not what SPEC §4 says for the step."""


class InvalidCallError(BackendError, ValueError):
    """A BackendCall without a field its step needs; the core never builds one."""
