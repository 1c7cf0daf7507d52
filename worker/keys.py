"""Every Redis key the worker uses (one place, as arq does): store v2, hash-tagged.

Records are spread over ``shards`` shards (PROVISIONING_STORE_SHARDS, 16 by default): a
record's shard is ``crc32(id) % shards``. Every key of a record and every index entry of
it carry its shard's hash tag ``{<tag>}``, so each Lua script touches keys of one Redis
Cluster slot only; the tags are chosen to spread the shards evenly over the 16,384 slots.
``<b>`` below is ``<p>:{<tag>}:`` of the shard.

Per record ``<id>``:
  ``<b>r:<id>``      list: [0] the record (``worker.store.codec``: ``<version>|<packed>``, ``0|``
                     none, ``0|x<time>`` deleted), then its history entries, oldest first
  ``<b>d:<id>``      zset: dedupe marks (accepted event ids, applied dedupe keys) -> when
                     seen (epoch s); trimmed to PROVISIONING_DEDUPE_WINDOW_SECONDS
  ``<b>i:<id>``      list: accepted events not yet applied (JSON ``[id, envelope]``)
  ``<b>l:<id>``      string: the owner draining the inbox; expires (PX)
  ``<b>c:<id>``      string: a recovery sweep or a submit kicked this record recently
Per shard:
  ``<b>pending``     zset record id -> time it got work; left when drained
  ``<b>retries``     zset record id -> when its retry is due (beat's sweep)
  ``<b>x:<s>:<k>``   set of the records of status ``<s>`` (position in StatusReason) and
                     channel kind ``<k>`` ("-" for none): ``list`` and the counts
  ``<b>calling``     set of records with a calling test InProgress
  ``<b>k:<c>``       hash lookup value -> the one record linking it, or ``*`` when several
                     do (then ``<b>k:<c>:<value>`` is the set of them); ``<c>`` the lookup
                     column's position in LOOKUP_COLUMNS
  ``<b>deleted``     zset record id -> when it was deleted (retention sweep)
  ``<b>purged``      zset record id -> when its history was purged (kept one retention)
  ``<b>outbox``      list of applied changes for the Dataverse mirror, commit order
  ``<b>f:<entry>``   failed-task entry (JSON); ``<b>failed`` zset entry -> last failure
                     (an entry's shard is that of its id)
Global (one key each, never in a multi-key script):
  ``<p>:meta``       hash {format, shards}: the stored format (worker.store.codec.FORMAT)
  ``<p>:deliveries:<task id>``  counter of deliveries of one Celery message (expires)
  ``<p>:audit``      list of operator actions (JSON), trimmed by beat
  ``<p>:beat:heartbeat``  string: beat's last heartbeat (host, pid); expires (PX)
  ``<p>:dataverse:lock`` / ``:etags`` / ``:status``  the Dataverse mirror's state
Per backend, per process (they expire; tagged so a script or MGET touches one slot):
  ``<p>:{rate:<backend>}``  string: the backend's shared rate limit (GCRA tat)
  ``<p>:{circuit}:<backend>:<host:pid>``  string: a process's open circuit (JSON); every
                     circuit in one slot, so ``provisioning health`` reads them in one MGET
  ``<p>:{circuit}:index``  zset ``<backend>:<host:pid>`` -> when that key expires: the
                     circuits are read without a SCAN
HTTP API tokens (worker/http/auth/tokens.py), one slot (revoking is one transaction):
  ``<p>:{api}:token:<token id>``  hash {name, role, hash (SHA-256 of the secret), created,
                     expires, last_used}; never the token itself
  ``<p>:{api}:tokens``  hash token name -> token id
The operator console (worker/console/once.py):
  ``<p>:console:once:<sha256 of the code>``  string: a one-time login (JSON name, role);
                     expires; deleted by its first use
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from statemachine import (
    AutomatedCallingStatus,
    ChannelKind,
    ProvisioningState,
    StatusReason,
)
from statemachine.table import LOOKUP_COLUMNS

DEFAULT_SHARDS = 16
_STATUS = tuple(StatusReason)
KIND_CODES: tuple[str, ...] = (*(kind.value for kind in ChannelKind), "-")


@cache
def shard_tags(shards: int) -> tuple[str, ...]:
    """One hash tag per shard, shard ``i``'s slot in the ``i``-th ``1/shards`` of the slot
    space (a cluster created with even slot ranges gets even shares of the shards)."""
    if not 1 <= shards <= REDIS_CLUSTER_HASH_SLOTS:
        raise ValueError(f"shards must be between 1 and {REDIS_CLUSTER_HASH_SLOTS}")
    tags = []
    for i in range(shards):
        low = i * REDIS_CLUSTER_HASH_SLOTS // shards
        high = (i + 1) * REDIS_CLUSTER_HASH_SLOTS // shards
        n = 0
        while not low <= key_slot(f"{i}.{n}".encode()) < high:
            n += 1
        tags.append(f"{i}.{n}")
    return tuple(tags)


def shard_of(name: str, shards: int) -> int:
    return zlib.crc32(name.encode("utf-8", "surrogatepass")) % shards


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix (PROVISIONING_KEY_PREFIX) and shard count."""

    prefix: str = "provisioning"
    shards: int = DEFAULT_SHARDS
    _bases: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_bases", tuple(
            f"{self.prefix}:{{{tag}}}:" for tag in shard_tags(self.shards)))

    # -- shards ----------------------------------------------------------------------------

    def shard(self, record_id: str) -> int:
        return shard_of(record_id, self.shards)

    def base(self, shard: int) -> str:
        """``<p>:{<tag>}:``: the start of every key of the shard."""
        return self._bases[shard]

    def base_of(self, record_id: str) -> str:
        return self._bases[self.shard(record_id)]

    # -- per record --------------------------------------------------------------------------

    def record(self, record_id: str) -> str:
        """The record (element 0) and its history (the rest)."""
        return f"{self.base_of(record_id)}r:{record_id}"

    history = record

    def window(self, record_id: str) -> str:
        return f"{self.base_of(record_id)}d:{record_id}"

    def inbox(self, record_id: str) -> str:
        return f"{self.base_of(record_id)}i:{record_id}"

    def lease(self, record_id: str) -> str:
        """Read by lua/claim_orphans.lua as ``<base>l:<id>``."""
        return f"{self.base_of(record_id)}l:{record_id}"

    def claimed(self, record_id: str) -> str:
        """Read by lua/claim_orphans.lua as ``<base>c:<id>``."""
        return f"{self.base_of(record_id)}c:{record_id}"

    # -- per shard ----------------------------------------------------------------------------

    def pending(self, shard: int) -> str:
        return f"{self._bases[shard]}pending"

    def retries(self, shard: int) -> str:
        return f"{self._bases[shard]}retries"

    def outbox(self, shard: int) -> str:
        return f"{self._bases[shard]}outbox"

    def deleted(self, shard: int) -> str:
        return f"{self._bases[shard]}deleted"

    def purged(self, shard: int) -> str:
        return f"{self._bases[shard]}purged"

    def calling_in_progress(self, shard: int) -> str:
        return f"{self._bases[shard]}calling"

    def index(self, shard: int, status: StatusReason, kind: str | None) -> str:
        return f"{self._bases[shard]}x:{_STATUS.index(status)}:{kind or '-'}"

    def links(self, shard: int, column: str) -> str:
        return f"{self._bases[shard]}k:{LOOKUP_COLUMNS.index(column)}"

    def index_sets(self, *, status: StatusReason | None = None,
                   kind: str | None = None) -> list[str]:
        """Every index set of these records, all shards (``None``: any)."""
        statuses = _STATUS if status is None else (status,)
        kinds = KIND_CODES if kind is None else (kind,)
        return [self.index(shard, s, k) for shard in range(self.shards)
                for s in statuses for k in kinds]

    def failed_entry(self, entry_id: str) -> str:
        return f"{self._bases[shard_of(entry_id, self.shards)]}f:{entry_id}"

    def failed(self, shard: int) -> str:
        return f"{self._bases[shard]}failed"

    def failed_of(self, entry_id: str) -> str:
        return self.failed(shard_of(entry_id, self.shards))

    # -- global --------------------------------------------------------------------------------

    @property
    def meta(self) -> str:
        return f"{self.prefix}:meta"

    def deliveries(self, task_id: str) -> str:
        return f"{self.prefix}:deliveries:{task_id}"

    @property
    def audit(self) -> str:
        return f"{self.prefix}:audit"

    def api_token(self, token_id: str) -> str:
        return f"{self.prefix}:{{api}}:token:{token_id}"

    @property
    def api_tokens(self) -> str:
        return f"{self.prefix}:{{api}}:tokens"

    def console_once(self, digest: str) -> str:
        """A one-time console login (worker/console/once.py), by the SHA-256 of its code."""
        return f"{self.prefix}:console:once:{digest}"

    @property
    def beat_heartbeat(self) -> str:
        """Written by beat on its ticks, with a time to live (worker/ops/heartbeat.py)."""
        return f"{self.prefix}:beat:heartbeat"

    def rate(self, backend: str) -> str:
        """A backend's shared rate limit (worker/backends/limits.py)."""
        return f"{self.prefix}:{{rate:{backend}}}"

    @property
    def circuits(self) -> str:
        """Every circuit key's ``<backend>:<holder>`` by when it expires, so the circuits
        are read without a SCAN of the keyspace (worker/store/circuits.py)."""
        return f"{self.prefix}:{{circuit}}:index"

    def circuit(self, backend: str, holder: str) -> str:
        """A process's circuit of a backend while it is not closed (worker/store/circuits.py)."""
        return f"{self.prefix}:{{circuit}}:{backend}:{holder}"

    @property
    def dataverse_lock(self) -> str:
        return f"{self.prefix}:dataverse:lock"

    @property
    def dataverse_etags(self) -> str:
        return f"{self.prefix}:dataverse:etags"

    @property
    def dataverse_status(self) -> str:
        return f"{self.prefix}:dataverse:status"

    # -- a record's index entries ----------------------------------------------------------

    def index_keys(self, record: ProvisioningState | None) -> set[str]:
        """The index sets a record belongs to (none for a missing record)."""
        if record is None:
            return set()
        shard = self.shard(record.id)
        kind = record.tracking.channel_kind
        keys = {self.index(shard, record.status, kind.value if kind else None)}
        if record.calling_status is AutomatedCallingStatus.IN_PROGRESS:
            keys.add(self.calling_in_progress(shard))
        return keys

    def link_entries(self, record: ProvisioningState | None) -> set[tuple[str, str]]:
        """(links hash, lookup value) of each lookup the record sets."""
        if record is None:
            return set()
        shard = self.shard(record.id)
        return {(self.links(shard, column), value) for column, value in record.links.items()
                if value is not None}


def dumps(value: Any) -> str:
    """Compact, stable JSON for everything stored. ASCII only: a lone surrogate that came
    in as a JSON escape cannot be encoded as UTF-8 for Redis; escaped, it is kept."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def encode_record(record: ProvisioningState) -> str:
    """The record's full JSON (the Dataverse read form plus ``_worker``): the v1 stored
    form, still what the in-memory store keeps and what migration reads."""
    return dumps(record.to_json())


def decode_record(text: str | bytes) -> ProvisioningState:
    return ProvisioningState.from_json(json.loads(text))
