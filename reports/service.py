"""Build any compliance report by kind: the one entry point the API, portal and pack use."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from sqlalchemy.orm import Session

from app.core.config import Settings
from reports.models import Filters, Period, Report, ReportKind

# Each report is built by `build` in its own module (no I/O but database reads).
_BUILDERS: dict[ReportKind, str] = {
    ReportKind.AUDIT_TRAIL: "reports.audit_trail",
    ReportKind.DECISION_LOG: "reports.decision_log",
    ReportKind.MODEL_CARD: "reports.model_card",
    ReportKind.PRIVACY_BUDGET: "reports.privacy_budget",
    ReportKind.CHANGE_CONTROL: "reports.change_control",
    ReportKind.MONITORING: "reports.monitoring",
    ReportKind.ACCESS: "reports.access",
}


class Builder(Protocol):
    """The signature every report module's `build` has."""

    def __call__(
        self,
        session: Session,
        *,
        period: Period,
        filters: Filters,
        generated_by: str,
        now: datetime,
    ) -> Report: ...


def builder(kind: ReportKind) -> Callable[..., Report]:
    """The `build` function of a report kind's module."""
    module = importlib.import_module(_BUILDERS[kind])
    build: Callable[..., Report] = module.build
    return build


def build(
    session: Session,
    *,
    kind: ReportKind,
    period: Period,
    filters: Filters,
    generated_by: str,
    now: datetime,
    settings: Settings | None = None,
) -> Report:
    """Build one report (reads only; the caller audits the export and commits). The
    settings go to the builders that read them (evidence files under the data directory,
    the signing key's public half, the privacy budget)."""
    build = builder(kind)
    extra = {"settings": settings} if "settings" in inspect.signature(build).parameters else {}
    return build(
        session, period=period, filters=filters, generated_by=generated_by, now=now, **extra
    )
