"""Exceptions of the Dataverse mirror. The tree (under ``worker.errors.WorkerError``)::

    MirrorError
    ├── MirrorBusy            another consumer holds the mirror's lock (``dataverse skip``)
    ├── UnreadableEntry       an outbox entry that is not the JSON the worker writes
    ├── RowRefused            an imported row that cannot become a record (``problems``)
    └── DataverseError        ``code``, ``message``, ``status``
        ├── DataverseAuthError    the token endpoint refused us, or a 401 survived a
        │                         fresh token
        ├── DataverseUnavailable  no answer (connect error, timeout) or a 5xx: try later
        ├── DataverseThrottled    429, a service protection limit; ``retry_after`` seconds
        ├── DataverseConflict     412: a stale If-Match etag, or a create of an id that exists
        ├── DataverseNotFound     404: the row (or the URL) does not exist
        └── DataverseRejected     any other 4xx: the request itself is wrong; sending it
                                  again as is cannot help

UnreadableEntry and RowRefused are ValueErrors too (bad data, not a failed request).

``code`` is the Web API's ``error.code`` (for example ``0x80072322``), the token endpoint's
``error`` (``invalid_client``), ``HTTP <status>`` when the body has none, or the httpx error
class for a request that got no answer. httpx errors are translated where they happen, in
``worker.dataverse.client`` and ``worker.dataverse.auth`` (``raise … from exc``).
"""

from __future__ import annotations

from collections.abc import Iterable

from worker.errors import WorkerError


class MirrorError(WorkerError):
    """Root of the mirror's exceptions."""


class DataverseError(MirrorError):
    """A Dataverse (or token endpoint) request failed; ``code`` says how."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        self.code = code
        self.message = message
        self.status = status
        where = f"HTTP {status} " if status is not None else ""
        super().__init__(f"Dataverse {where}{code}: {message}".rstrip(": "))

    @property
    def transient(self) -> bool:
        """True when the same request may succeed later without anyone changing anything."""
        return False


class DataverseAuthError(DataverseError):
    """No usable token: bad credentials, tenant or scope, or a 401 after a fresh token."""


class DataverseUnavailable(DataverseError):
    """Dataverse did not answer, or answered 5xx (an outage or a timeout)."""

    @property
    def transient(self) -> bool:
        return True


class DataverseThrottled(DataverseError):
    """429 Too Many Requests (Dataverse service protection); wait ``retry_after`` seconds."""

    def __init__(self, code: str, message: str, *, status: int | None = 429,
                 retry_after: float = 0.0) -> None:
        super().__init__(code, message, status=status)
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        return True


class DataverseConflict(DataverseError):
    """412 Precondition Failed: the row changed since our etag, or its id already exists."""


class DataverseNotFound(DataverseError):
    """404: the row does not exist (or the entity set is not in this organization)."""


class DataverseRejected(DataverseError):
    """Another 4xx: the request is wrong for this organization (a bad column or value, a
    lookup to a row that does not exist, a missing privilege)."""


class MirrorBusy(MirrorError):
    """Another consumer holds the mirror's lock."""


class UnreadableEntry(MirrorError, ValueError):
    """An outbox entry that is not the JSON the worker writes (it cannot be sent)."""


class RowRefused(MirrorError, ValueError):
    """A Dataverse row that cannot become a record; ``problems`` says why, one line each."""

    def __init__(self, record_id: str | None, problems: Iterable[str]) -> None:
        self.record_id = record_id
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))
