"""Prometheus metrics: request counts and latency, and database gauges read at scrape time.

Request metrics live in each process (or, with `PROMETHEUS_MULTIPROC_DIR` set, in files every
worker of one server writes and any worker sums). Everything else is counted in the database
when scraped, so every replica and worker answers the same. Labels hold route templates,
statuses, job and model names: never a raw path, an id or anything about a patient.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import multiprocess as prom_multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import ColumnElement, Connection, Engine, func, select
from sqlmodel import SQLModel, col
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.deps import SessionDep, SettingsDep, audit_denial, public_route
from app.core.errors import ProblemError
from app.db import READONLY_OPTION
from device_ingest.models import EvaluationRequest, IngestBatch, OutboxStatus
from loops.models import Alert, AlertStatus, Proposal, ProposalStatus
from mlops.models import ModelAlias
from validation.models import JobRun

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED = "unmatched"  # a path no route serves: its text stays out of the labels

router = APIRouter(tags=["metrics"])


def multiprocess_mode() -> bool:
    """True when request metrics are shared through files across worker processes."""
    return bool(os.environ.get(MULTIPROC_ENV))


def status_class(status: int) -> str:
    """`2xx`, `4xx`, ...: the label requests are grouped by."""
    return f"{status // 100}xx"


def route_template(scope: Scope) -> str:
    """The template of the route that served the request (`/api/v1/patients/{patient_id}`)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


class RequestMetrics:
    """The request counter and latency histogram of one app."""

    def __init__(self) -> None:
        # Not registered globally: each app exposes its own (tests build many apps).
        labels = ("method", "route", "status")
        self.requests = Counter(
            "clinaiops_http_requests",
            "HTTP requests served, by method, route template and status class.",
            labels,
            registry=None,
        )
        self.latency = Histogram(
            "clinaiops_http_request_duration_seconds",
            "Time from a request's arrival to its response's end, admission wait included.",
            labels,
            registry=None,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request."""
        status_label = status_class(status)
        self.requests.labels(method, route, status_label).inc()
        self.latency.labels(method, route, status_label).observe(seconds)


class MetricsMiddleware:
    """Time every HTTP request and count it by method, route template and status class."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app fails before answering

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            # Routing writes the matched route into this same scope dict.
            self.metrics.observe(
                scope.get("method", "GET"),
                route_template(scope),
                status,
                time.perf_counter() - started,
            )


class DatabaseCollector(Collector):
    """Gauges and counters counted in the database at each scrape (the same on every replica)."""

    def __init__(self, engine: Engine) -> None:
        # Read-only: on SQLite a snapshot that does not take the writer slot.
        self.engine = engine.execution_options(**{READONLY_OPTION: True})

    def collect(self) -> Iterator[Metric]:
        """Read the counts; a database that does not answer leaves them out of the scrape."""
        up = GaugeMetricFamily(
            "clinaiops_metrics_database_up", "1 when the database answered this scrape."
        )
        try:
            families = self._read()
        except Exception:  # any database failure: the request metrics are still worth serving
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> list[Metric]:
        with self.engine.connect() as conn:
            totals = conn.execute(
                select(
                    func.coalesce(func.sum(col(IngestBatch.accepted)), 0),
                    func.coalesce(func.sum(col(IngestBatch.duplicates)), 0),
                    func.coalesce(func.sum(col(IngestBatch.quarantined)), 0),
                    func.coalesce(func.sum(col(IngestBatch.rejected)), 0),
                )
            ).one()
            outbox = _count(
                conn, EvaluationRequest, col(EvaluationRequest.status) == OutboxStatus.PENDING
            )
            review = _count(conn, Proposal, col(Proposal.status) == ProposalStatus.PENDING_REVIEW)
            alerts = _count(conn, Alert, col(Alert.status) == AlertStatus.OPEN)
            routes = conn.execute(
                select(col(Proposal.route), func.count()).group_by(col(Proposal.route))
            ).all()
            aliases = conn.execute(
                select(col(ModelAlias.model_name), col(ModelAlias.alias), col(ModelAlias.version))
            ).all()
            jobs = conn.execute(
                select(col(JobRun.job), col(JobRun.status), func.count()).group_by(
                    col(JobRun.job), col(JobRun.status)
                )
            ).all()

        ingest = CounterMetricFamily(
            "clinaiops_ingest_readings",
            "Readings sent by devices, by outcome (sums over every ingest batch).",
            labels=["outcome"],
        )
        for outcome, value in zip(
            ("accepted", "duplicate", "quarantined", "rejected"), totals, strict=True
        ):
            ingest.add_metric([outcome], float(value))
        queue = GaugeMetricFamily(
            "clinaiops_queue_depth",
            "Work waiting: pending loop evaluations (outbox), proposals awaiting review, "
            "unacknowledged alerts.",
            labels=["queue"],
        )
        queue.add_metric(["evaluation_outbox"], float(outbox))
        queue.add_metric(["review"], float(review))
        queue.add_metric(["alerts_unacknowledged"], float(alerts))
        proposals = CounterMetricFamily(
            "clinaiops_proposals",
            "Proposals made, by route (auto_deliver or clinician_review).",
            labels=["route"],
        )
        for route, count in sorted(routes):
            proposals.add_metric([str(route)], float(count))
        serving = GaugeMetricFamily(
            "clinaiops_model_serving",
            "1 for each model version an alias points at (champion: serving; challenger: in "
            "rollout).",
            labels=["model", "alias", "version"],
        )
        for name, alias, version in sorted(aliases):
            serving.add_metric([str(name), str(alias), str(version)], 1.0)
        job_runs = GaugeMetricFamily(
            "clinaiops_job_runs",
            "Recorded runs of scheduled jobs, by job and status (job_runs rows).",
            labels=["job", "status"],
        )
        for job, status, count in sorted(jobs):
            job_runs.add_metric([str(job), str(status)], float(count))
        return [ingest, queue, proposals, serving, job_runs]


def _count(conn: Connection, table: type[SQLModel], where: ColumnElement[bool]) -> int:
    return int(conn.execute(select(func.count()).select_from(table).where(where)).scalar_one())


def build_registry(metrics: RequestMetrics, engine: Engine) -> CollectorRegistry:
    """The registry a scrape reads: this app's request metrics (or every worker's) and the DB."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_mode():
        prom_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(metrics.requests)
        registry.register(metrics.latency)
    registry.register(DatabaseCollector(engine))
    return registry


def _authorized(request: Request, token: str | None) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if token is None or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


@router.get("/metrics", include_in_schema=False)
@public_route  # not a user route: guarded by its own bearer token (metrics_token), below
def metrics(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """Prometheus text exposition; needs `Authorization: Bearer <metrics_token>`."""
    if not _authorized(request, settings.metrics_token):
        # A refusal is audited like every other; a granted scrape is not (it holds no
        # patient data, like /readyz).
        code = "unauthenticated" if settings.metrics_token else "metrics_disabled"
        audit_denial(
            request,
            session,
            principal=None,
            action="metrics.read",
            resource_type="metrics",
            code=code,
        )
        raise ProblemError(
            401,
            code,
            "send Authorization: Bearer <the metrics token>"
            if settings.metrics_token
            else "metrics are off: set CLINAIOPS_METRICS_TOKEN",
            headers={"WWW-Authenticate": "Bearer"},
        )
    session.close()  # the scrape reads on its own read-only connection
    registry: Any = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
