"""Emulators of what the worker talks to, for the demo, docker-compose, the tests and the
benchmarks; none of it is loaded by the production worker.

* ``backends``: ``Emulator``, the provisioner, GateKeeper and calling-test backends of
  SPEC §4 (``backends_routes``: what a request is; ``backends_scripts``: scripted answers);
* ``dataverse``: ``DataverseEmulator``, the Dataverse Web API and token endpoint, reached
  through the backends emulator (``dataverse_rows``, ``dataverse_wire``,
  ``dataverse_state``, ``dataverse_admin``: its rules);
* ``serving``: ``Reply``, the answer both give, and the threaded HTTP server behind
  ``server``: ``EmulatorServer``, ``serve`` and ``main`` (``python -m worker.emulators``);
* ``embedded``: ``EmbeddedRedis`` (``embedded.start()``), a Redis for the demo and tests
  when none is configured, and ``free_port``.

The emulators import only ``statemachine`` (the steps and the table's facts), never the
worker's Celery app, bootstrap, service or store.
"""

from worker.emulators.backends import Emulator, GateState, RecordedRequest
from worker.emulators.backends_scripts import ANY_TARGET, Answer
from worker.emulators.dataverse import DataverseEmulator
from worker.emulators.dataverse_state import Fault, RecordedCall
from worker.emulators.embedded import EmbeddedRedis, free_port
from worker.emulators.server import EmulatorServer, main, serve
from worker.emulators.serving import Reply

__all__ = [
    "ANY_TARGET",
    "Answer",
    "DataverseEmulator",
    "EmbeddedRedis",
    "Emulator",
    "EmulatorServer",
    "Fault",
    "GateState",
    "RecordedCall",
    "RecordedRequest",
    "Reply",
    "free_port",
    "main",
    "serve",
]
