"""The FastAPI application factory."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import anyio.to_thread
from fastapi import FastAPI
from sqlalchemy import Engine

from app import health, metrics
from app.auth import views as auth_views
from app.core import errors
from app.core.config import Settings, get_settings
from app.core.middleware import (
    AdmissionMiddleware,
    BodySizeLimitMiddleware,
    RequestContextMiddleware,
)
from app.db import get_engine, session_factory
from app.patients import views as patient_views
from app.portal import views as portal_views
from audit import views as audit_views
from device_ingest import views as device_views
from loops import views as loop_views
from loops.care import views as care_views
from loops.messages import views as message_views
from loops.review import views as review_views
from loops.visits import views as visit_views
from loops.worker import LoopWorker
from mlops import views as model_views
from reports import views as report_views
from validation import jobs
from validation import views as validation_views
from validation.scheduler import Scheduler


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Size the pool sync routes run on; AdmissionMiddleware keeps requests below it.
    limiter = anyio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = app.state.settings.thread_pool_size
    # Parsing a 1,000-reading body allocates tens of thousands of containers; with the
    # default young-generation threshold (700) the cyclic collector runs dozens of times per
    # request and rescans the whole heap. Freeze what start-up built and collect less often.
    gc.freeze()
    gc.set_threshold(app.state.settings.gc_gen0_threshold, 20, 20)
    settings = app.state.settings
    worker: LoopWorker | None = None
    scheduler: Scheduler | None = None
    # loop_worker_seconds 0: no background work on real time (tests and the simulator).
    if settings.loop_worker_seconds > 0:
        worker = LoopWorker(
            app.state.session_factory,
            interval=settings.loop_worker_seconds,
            debounce=timedelta(seconds=settings.loop_debounce_seconds),
        )
        worker.start()
        if settings.scheduler_in_process:
            # Safe in every replica and worker process: each firing runs once (job leases).
            scheduler = Scheduler(app.state.session_factory, jobs.registry(settings), settings)
            scheduler.start()
    try:
        yield
    finally:
        if scheduler is not None:
            scheduler.stop(wait=True)
        if worker is not None:
            worker.stop()


# Every router the app serves; tests walk these to prove each route is authorized.
ROUTERS = (
    health.router,
    metrics.router,
    device_views.fhir_router,
    auth_views.router,
    patient_views.router,
    device_views.router,
    audit_views.router,
    portal_views.router,
    loop_views.router,
    loop_views.fhir_router,
    review_views.router,
    care_views.router,
    care_views.fhir_router,
    visit_views.router,
    message_views.router,
    model_views.router,
    validation_views.router,
    validation_views.jobs_router,
    report_views.router,
)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """Build the app for the given settings and database engine."""
    settings = settings or get_settings()
    engine = engine or get_engine()
    app = FastAPI(
        lifespan=_lifespan,
        title="ClinAIOps",
        version="0.1.0",
        summary="Clinical AI operations with bounded autonomy and a verifiable audit trail.",
        openapi_url="/openapi.json",
        # Swagger UI loads from a CDN with inline script, which the CSP (and an offline
        # clinic network) forbid; the OpenAPI document is served instead.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = session_factory(engine)
    errors.install(app)
    # Starlette runs the last-added middleware first: the request id must exist before the
    # size check answers, so it can carry one.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AdmissionMiddleware, limit=settings.max_concurrent_requests)
    app.add_middleware(RequestContextMiddleware)
    # Outermost: times the whole request (admission wait included) and sees every answer.
    request_metrics = metrics.RequestMetrics()
    app.state.metrics_registry = metrics.build_registry(request_metrics, engine)
    app.add_middleware(metrics.MetricsMiddleware, metrics=request_metrics)
    app.mount("/portal/static", portal_views.static, name="portal_static")
    for router in ROUTERS:
        app.include_router(router)
    return app


def app_factory() -> FastAPI:
    """Uvicorn entry point (`--factory`)."""
    return create_app()
