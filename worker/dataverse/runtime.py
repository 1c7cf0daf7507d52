"""The mirror of this process (for the Celery task), built once per process after a fork."""

from __future__ import annotations

import os
import threading

from worker.dataverse.mirror import Mirror

_lock = threading.Lock()
_mirrors: dict[int, Mirror | None] = {}


def process_mirror() -> Mirror | None:
    """This process's Mirror, or None when PROVISIONING_DATAVERSE_URL is not set."""
    from worker import bootstrap

    pid = os.getpid()
    with _lock:
        if pid not in _mirrors:
            _mirrors.clear()  # a forked child drops its parent's (its connections too)
            _mirrors[pid] = bootstrap.build_mirror(bootstrap.current_settings())
        return _mirrors[pid]


def reset() -> None:
    with _lock:
        _mirrors.clear()
