"""The stored format's stamp, ``<prefix>:meta`` {format, shards}: a worker stamps an empty
store as format 2 with its shard count, and refuses a v1 store (run ``provisioning
migrate``, docs/store.md) or one written with another PROVISIONING_STORE_SHARDS. The
read-only commands check without stamping."""

from __future__ import annotations

from typing import Any, cast

from worker.errors import ConfigurationError
from worker.keys import Keys
from worker.store.codec import FORMAT


def ensure(client: Any, keys: Keys, *, stamp: bool = True) -> None:
    """Check the stamp; with ``stamp``, write it on a store that has none. An unstamped
    store holding v1 keys is refused either way."""
    stored = cast(dict[str, str], client.hgetall(keys.meta))
    if not stored:
        if client.exists(f"{keys.prefix}:idx:all"):
            raise ConfigurationError(
                f"the store under {keys.prefix!r} is format 1; stop the workers and run "
                "`provisioning migrate` (docs/store.md)")
        if not stamp:
            return  # nothing written yet: the first worker stamps it
        client.hsetnx(keys.meta, "format", str(FORMAT))
        client.hsetnx(keys.meta, "shards", str(keys.shards))
        stored = cast(dict[str, str], client.hgetall(keys.meta))
    if stored.get("format") != str(FORMAT):
        raise ConfigurationError(
            f"the store under {keys.prefix!r} is format {stored.get('format')}; this worker "
            f"reads format {FORMAT}")
    if stored.get("shards") != str(keys.shards):
        raise ConfigurationError(
            f"PROVISIONING_STORE_SHARDS: the store was written with {stored.get('shards')} "
            f"shards, not {keys.shards}")
