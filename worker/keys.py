"""Every Redis key the worker uses, and the codecs of what they hold (one place, as arq does).

Per record ``<id>``:
  ``<p>:record:<id>``      hash {v: versionnumber, json: the record's stored JSON}
  ``<p>:history:<id>``     list of history entries (JSON), oldest first
  ``<p>:inbox:<id>``       list of accepted events not yet applied (JSON envelopes), in order
  ``<p>:accepted:<id>``    set of event ids accepted into the inbox (accept dedupe)
  ``<p>:applied:<id>``     set of dedupe keys already applied (invariant 8)
  ``<p>:lease:<id>``       string: the owner draining the inbox; expires (PX)
  ``<p>:claimed:<id>``     string: a recovery sweep or a submit kicked this record recently;
                           expires (recovery sweeps leave it alone until then)
Global:
  ``<p>:pending``          zset record id -> time it got work; left when drained
  ``<p>:retries``          zset record id -> when its retry is due (beat's sweep)
  ``<p>:idx:status:<code>`` / ``<p>:idx:kind:<kind>`` / ``<p>:idx:link:<column>:<uuid>``
                           sets of record ids, for ``list`` and ``parent.deleted``
  ``<p>:idx:all``          set of every live record id
  ``<p>:idx:calling:inprogress``  set of records with a calling test InProgress
  ``<p>:outbox``           list of applied changes for the Dataverse mirror, commit order
  ``<p>:failed:<entry>``   failed-task entry (JSON); ``<p>:failed`` zset entry -> last failure
  ``<p>:deliveries:<task id>``  counter of deliveries of one Celery message (expires)
  ``<p>:audit``            list of operator actions (JSON)
  ``<p>:beat:heartbeat``   string: beat's last heartbeat (host, pid); expires (PX)
  ``<p>:rate:<backend>``   string: the backend's shared rate limit (GCRA tat); expires
  ``<p>:circuit:<backend>:<host:pid>``  string: a process's open circuit (JSON); expires
HTTP API tokens (worker/http/auth/tokens.py):
  ``<p>:api:token:<token id>``  hash {name, role, hash (SHA-256 of the secret), created,
                           expires, last_used}; never the token itself
  ``<p>:api:tokens``       hash token name -> token id
The operator console (worker/console/once.py):
  ``<p>:console:once:<sha256 of the code>``  string: a one-time login (JSON name, role);
                           expires; deleted by its first use
Dataverse mirror (worker/dataverse/):
  ``<p>:dataverse:lock``   string: the one mirror consumer sending the outbox; expires (PX)
  ``<p>:dataverse:etags``  hash record id -> the row's etag in Dataverse (for If-Match)
  ``<p>:dataverse:status`` hash: last success, last error, pause, counters, pacing state
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from statemachine import AutomatedCallingStatus, ProvisioningState


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix (PROVISIONING_KEY_PREFIX)."""

    prefix: str = "provisioning"

    def record(self, record_id: str) -> str:
        return f"{self.prefix}:record:{record_id}"

    def history(self, record_id: str) -> str:
        return f"{self.prefix}:history:{record_id}"

    def inbox(self, record_id: str) -> str:
        return f"{self.prefix}:inbox:{record_id}"

    def accepted(self, record_id: str) -> str:
        return f"{self.prefix}:accepted:{record_id}"

    def applied(self, record_id: str) -> str:
        return f"{self.prefix}:applied:{record_id}"

    def lease(self, record_id: str) -> str:
        return f"{self.prefix}:lease:{record_id}"

    def claimed(self, record_id: str) -> str:
        """Read by lua/claim_orphans.lua as ``<prefix>:claimed:<id>``."""
        return f"{self.prefix}:claimed:{record_id}"

    @property
    def pending(self) -> str:
        return f"{self.prefix}:pending"

    @property
    def retries(self) -> str:
        return f"{self.prefix}:retries"

    @property
    def outbox(self) -> str:
        return f"{self.prefix}:outbox"

    @property
    def all_records(self) -> str:
        return f"{self.prefix}:idx:all"

    def by_status(self, statuscode: int) -> str:
        return f"{self.prefix}:idx:status:{statuscode}"

    def by_kind(self, kind: str) -> str:
        return f"{self.prefix}:idx:kind:{kind}"

    @property
    def calling_in_progress(self) -> str:
        return f"{self.prefix}:idx:calling:inprogress"

    def by_link(self, column: str, value: str) -> str:
        return f"{self.prefix}:idx:link:{column}:{value}"

    def failed_entry(self, entry_id: str) -> str:
        return f"{self.prefix}:failed:{entry_id}"

    @property
    def failed(self) -> str:
        return f"{self.prefix}:failed"

    def deliveries(self, task_id: str) -> str:
        return f"{self.prefix}:deliveries:{task_id}"

    @property
    def audit(self) -> str:
        return f"{self.prefix}:audit"

    def api_token(self, token_id: str) -> str:
        return f"{self.prefix}:api:token:{token_id}"

    @property
    def api_tokens(self) -> str:
        return f"{self.prefix}:api:tokens"

    def console_once(self, digest: str) -> str:
        """A one-time console login (worker/console/once.py), by the SHA-256 of its code."""
        return f"{self.prefix}:console:once:{digest}"

    @property
    def beat_heartbeat(self) -> str:
        """Written by beat on its ticks, with a time to live (worker/ops/heartbeat.py)."""
        return f"{self.prefix}:beat:heartbeat"

    def rate(self, backend: str) -> str:
        """A backend's shared rate limit (worker/backends/limits.py)."""
        return f"{self.prefix}:rate:{backend}"

    @property
    def circuits(self) -> str:
        """Every circuit key's ``<backend>:<holder>`` by when it expires, so the circuits
        are read without a SCAN of the keyspace (worker/store/circuits.py)."""
        return f"{self.prefix}:circuits"

    def circuit(self, backend: str, holder: str) -> str:
        """A process's circuit of a backend while it is not closed (worker/store/circuits.py)."""
        return f"{self.prefix}:circuit:{backend}:{holder}"

    @property
    def dataverse_lock(self) -> str:
        return f"{self.prefix}:dataverse:lock"

    @property
    def dataverse_etags(self) -> str:
        return f"{self.prefix}:dataverse:etags"

    @property
    def dataverse_status(self) -> str:
        return f"{self.prefix}:dataverse:status"

    def index_keys(self, record: ProvisioningState | None) -> set[str]:
        """The index sets a record belongs to (none for a missing record)."""
        if record is None:
            return set()
        keys = {self.all_records, self.by_status(int(record.status))}
        if record.tracking.channel_kind is not None:
            keys.add(self.by_kind(record.tracking.channel_kind.value))
        if record.calling_status is AutomatedCallingStatus.IN_PROGRESS:
            keys.add(self.calling_in_progress)
        keys.update(
            self.by_link(column, value) for column, value in record.links.items()
            if value is not None
        )
        return keys


def dumps(value: Any) -> str:
    """Compact, stable JSON for everything stored. ASCII only: a lone surrogate that came
    in as a JSON escape cannot be encoded as UTF-8 for Redis; escaped, it is kept."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def encode_record(record: ProvisioningState) -> str:
    return dumps(record.to_json())


def decode_record(text: str | bytes) -> ProvisioningState:
    return ProvisioningState.from_json(json.loads(text))
