# syntax=docker/dockerfile:1
# The Provisioning State worker: one image for the worker, beat and the backend emulator.
#   docker build -t provisioning-state-worker .
#   docker run --rm -e PROVISIONING_REDIS_URL=redis://redis:6379/0 provisioning-state-worker
# docs/deploy.md says how docker-compose.yml and deploy/ use it.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY statemachine ./statemachine
COPY worker ./worker
# constraints.txt pins every dependency (scripts/lock refreshes it): a rebuild installs the
# same versions, not whatever was released since. The [azure] extra: certificate, workload
# and managed identity sign-in to Dataverse.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-compile -c constraints.txt '.[azure]' \
    && /opt/venv/bin/python -m compileall -q /opt/venv

FROM python:3.11-slim-bookworm
# A system user with a fixed uid, so Kubernetes' runAsNonRoot/runAsUser can name it.
RUN groupadd --system --gid 10001 provisioning \
    && useradd --system --uid 10001 --gid provisioning --home-dir /var/lib/provisioning \
       --create-home --shell /usr/sbin/nologin provisioning
COPY --from=build /opt/venv /opt/venv
# Metrics are bound to all interfaces so Prometheus can reach them from outside the
# container. REMAP_SIGTERM=SIGQUIT: SIGTERM (docker stop, Kubernetes) starts Celery's soft
# shutdown, then a cold one that requeues whatever is still unacknowledged
# (worker_soft_shutdown_timeout in worker/app.py).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PROVISIONING_LOG_FORMAT=json \
    PROVISIONING_METRICS_ADDRESS=0.0.0.0 \
    PROVISIONING_METRICS_DIR=/tmp/provisioning-metrics \
    REMAP_SIGTERM=SIGQUIT
USER 10001:10001
WORKDIR /var/lib/provisioning
EXPOSE 9839
STOPSIGNAL SIGTERM
# Exec form: celery is PID 1 and receives SIGTERM itself (no shell in between).
CMD ["celery", "-A", "worker.app", "worker", "--loglevel", "INFO"]
