"""The HTTP client of the three backends (SPEC §4): provisioner, GateKeeper, calling test.

* ``client``: ``Backends``, one call with its in-task tries; failures are values;
* ``aio``: ``AsyncBackends``, the same on the step loop, each try through its backend's gate;
* ``wire``: the step loop's HTTP (aiohttp, answers as ``httpx.Response``);
* ``limits``: each backend's gate (in-flight cap, shared GCRA rate, circuit);
* ``breaker``: the circuit breaker;
* ``requests``: what each step sends and what a success must carry;
* ``policy``: which failures are transient, and the backoff between tries;
* ``results``: ``CallResult`` and ``CallFailure``;
* ``errors``: the ``BackendError`` tree.
"""

from worker.backends.client import IDEMPOTENCY_HEADER, Backends, http_timeout
from worker.backends.errors import (
    BackendError,
    BackendNotConfigured,
    InvalidCallError,
    InvalidResponseError,
)
from worker.backends.policy import TRANSIENT_STATUSES
from worker.backends.requests import BODY_START_MAX
from worker.backends.results import CallFailure, CallResult

__all__ = [
    "BODY_START_MAX",
    "IDEMPOTENCY_HEADER",
    "TRANSIENT_STATUSES",
    "BackendError",
    "BackendNotConfigured",
    "Backends",
    "CallFailure",
    "CallResult",
    "InvalidCallError",
    "InvalidResponseError",
    "http_timeout",
]
