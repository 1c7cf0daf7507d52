"""Operating the worker: health checks, beat's heartbeat, metrics, operator actions.

* ``health``: the checks of ``provisioning health``;
* ``heartbeat``: beat's heartbeat, written on its ticks and read by the checks;
* ``metrics``: the Prometheus endpoint, the service's observer, the scrape-time gauges;
* ``operate``: replaying and discarding failed-task entries, audited.
"""

from worker.ops.health import CHECKS, Check, run_checks, summary
from worker.ops.heartbeat import BeatHeartbeat, Heartbeat, read_heartbeat, write_heartbeat
from worker.ops.metrics import MetricsEndpoint, PrometheusObserver, StoreCollector
from worker.ops.operate import Operator

__all__ = [
    "CHECKS",
    "BeatHeartbeat",
    "Check",
    "Heartbeat",
    "MetricsEndpoint",
    "Operator",
    "PrometheusObserver",
    "StoreCollector",
    "read_heartbeat",
    "run_checks",
    "summary",
    "write_heartbeat",
]
