"""The worker's behaviour, called by every entry point (Celery tasks, CLI, HTTP API).

* ``service``: ``Service``, the one object the entry points hold;
* ``ingest``: validating and accepting events into records' inboxes;
* ``drain``: applying each record's inbox in order under its lease, committing in batches;
* ``effects``: what a change's effects ask of the store and the worker (one interpreter);
* ``steps``: running a started step's backend calls off the drain's thread (step threads);
* ``step_loop``: the same on one asyncio event loop per process (the worker's default);
* ``circuits``: what a backend circuit's change does (log, metric, health entry);
* ``leases``: renewing the leases a drain holds;
* ``failures``: the failed-task bookkeeping (refuse, retries used up, replay resolved, age-out);
* ``sweeps``: beat's sweeps and the recovery timer;
* ``observer``: what the service reports as it works (metrics);
* ``context``: the wiring the parts share, as a Protocol.
"""

from worker.service.drain import DrainReport
from worker.service.ingest import Accepted, Refusal, SubmitReport, submit_events, validate
from worker.service.observer import NoObserver, Observer
from worker.service.service import Service

__all__ = [
    "Accepted",
    "DrainReport",
    "NoObserver",
    "Observer",
    "Refusal",
    "Service",
    "SubmitReport",
    "submit_events",
    "validate",
]
