"""The Dataverse mirror: keeps an organization's ``msdyn_ocprovisioningstates`` rows in step
with the worker's records, and imports the rows it already has.

* ``settings``: ``MirrorSettings`` (the connection from ``Settings`` plus the mirror's own
  PROVISIONING_DATAVERSE_* tunables);
* ``auth``: ``TokenCache``, OAuth 2.0 client credentials, cached and refreshed early;
* ``client``: ``DataverseClient``, the Web API calls, errors translated (``errors``);
* ``pacing``: ``Pacer``, below the service protection limits;
* ``state``: ``MirrorState``, the consumer lock, row etags and status (Redis, memory twin);
* ``mirror``: ``Mirror``, the single ordered consumer of the outbox;
* ``importer``: ``Importer`` and ``import_record``;
* ``commands``: the ``provisioning dataverse`` subcommands.
"""

from worker.dataverse.auth import TokenCache
from worker.dataverse.client import DataverseClient
from worker.dataverse.errors import (
    DataverseAuthError,
    DataverseConflict,
    DataverseError,
    DataverseNotFound,
    DataverseRejected,
    DataverseThrottled,
    DataverseUnavailable,
    MirrorBusy,
    MirrorError,
    RowRefused,
    UnreadableEntry,
)
from worker.dataverse.importer import Imported, Importer, ImportReport, import_record
from worker.dataverse.mirror import Mirror, RunReport
from worker.dataverse.outbox import OutboxEntry
from worker.dataverse.pacing import Pacer
from worker.dataverse.settings import SERVICE_WINDOW_SECONDS, MirrorSettings
from worker.dataverse.state import MemoryMirrorState, MirrorState, RedisMirrorState

__all__ = [
    "SERVICE_WINDOW_SECONDS",
    "DataverseAuthError",
    "DataverseClient",
    "DataverseConflict",
    "DataverseError",
    "DataverseNotFound",
    "DataverseRejected",
    "DataverseThrottled",
    "DataverseUnavailable",
    "ImportReport",
    "Imported",
    "Importer",
    "MemoryMirrorState",
    "Mirror",
    "MirrorBusy",
    "MirrorError",
    "MirrorSettings",
    "MirrorState",
    "OutboxEntry",
    "Pacer",
    "RedisMirrorState",
    "RowRefused",
    "RunReport",
    "TokenCache",
    "UnreadableEntry",
    "import_record",
]
