"""A small seeded clinic for the report tests: four proposals (approved, rejected with a
hostile reason, delivered within the envelope by model v2, pending), a few audited reads and
denials through the API, and a signed tree head over all of it."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import BytesIO, StringIO

import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app.core import clock
from app.db import session_factory
from audit import service as audit
from audit.keys import load_signing_key
from loops.models import Proposal, ProposalStatus
from loops.review import service as review
from policies.routing import Route
from reports.models import Filters, Period, Report
from tests.conftest import PASSWORD, World
from tests.review.conftest import propose, regimens

__all__ = ["propose", "regimens"]  # fixtures reused from the review tests

HOSTILE = '<script>alert("x")</script> =cmd|calc'
GENERATED_AT = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@dataclass
class Seeded:
    """The seeded clinic and a period that covers everything in it."""

    world: World
    period: Period
    approved: Proposal
    rejected: Proposal
    delivered: Proposal
    pending: Proposal

    def pseudonym(self, key: str) -> str:
        """A patient's pseudonym by fixture key (`pa1`)."""
        return self.world.patients[key].pseudonym


@pytest.fixture
def seeded(world: World, client: TestClient, propose: Callable[..., Proposal]) -> Seeded:
    """Proposals with decisions, audited reads and denials, and a tree head covering them."""
    s = world.session
    approved = propose("pa1")
    rejected = propose("pa2")
    delivered = propose("pb1", "hold", status=ProposalStatus.DELIVERED)
    delivered.route, delivered.reasons = Route.AUTO_DELIVER, []
    delivered.model_version = "titration:v2"
    pending = propose("pb2", confidence=0.7)
    s.commit()
    now = clock.utcnow()
    review.decide(
        s,
        proposal_id=approved.id,
        user=world.users["clina"],
        kind="approve",
        password=PASSWORD,
        meaning_confirmed=True,
        now=now,
        settings=world.settings,
    )
    review.decide(
        s,
        proposal_id=rejected.id,
        user=world.users["clina"],
        kind="reject",
        password=PASSWORD,
        meaning_confirmed=True,
        now=now,
        reason_code="other",
        reason_text=HOSTILE,
        settings=world.settings,
    )
    s.commit()
    pa1 = world.patients["pa1"].id
    # Reads through the API, so the audit entries carry the actions the routes really use.
    assert client.get(f"/api/v1/patients/{pa1}", headers=world.auth("clina")).is_success
    assert client.get("/api/v1/patients", headers=world.auth("clina")).is_success
    detail = client.get(f"/api/v1/review/proposals/{pending.id}", headers=world.auth("clinb"))
    assert detail.is_success
    # Out of scope (team B reading a team A patient): 404, audited as a denial.
    assert client.get(f"/api/v1/patients/{pa1}", headers=world.auth("clinb")).status_code == 404
    # A patient asking for the admin listing of users: 403.
    assert client.get("/api/v1/admin/users", headers=world.auth("pa1")).status_code == 403
    assert world.settings.signing_key_path is not None
    audit.checkpoint(s, key=load_signing_key(world.settings.signing_key_path))
    s.commit()
    for p in (approved, rejected, delivered, pending):
        s.refresh(p)
    s.commit()  # end the read: on SQLite every transaction holds the single writer
    hour = clock.utcnow().replace(minute=0, second=0, microsecond=0)
    period = Period(hour - timedelta(days=1), hour + timedelta(hours=2))
    return Seeded(world, period, approved, rejected, delivered, pending)


def build(
    builder: Callable[..., Report],
    seeded: Seeded,
    session: Session,
    filters: Filters | None = None,
) -> Report:
    """Build a report over the seeded period, as `auditor`, generated at GENERATED_AT."""
    return builder(
        session,
        period=seeded.period,
        filters=filters or Filters(),
        generated_by="auditor",
        now=GENERATED_AT,
    )


@pytest.fixture
def reader(engine: Engine) -> Iterator[Session]:
    """A session of its own for the builders, closed after the test (builders never commit)."""
    with session_factory(engine)() as session:
        yield session


def pdf_pages(pdf: bytes) -> list[str]:
    """Each page's extracted text, with all whitespace removed (line breaks fall anywhere)."""
    reader = PdfReader(BytesIO(pdf))
    return ["".join(page.extract_text().split()) for page in reader.pages]


def squeeze(text: str) -> str:
    """Text without whitespace, to find it in `pdf_pages` output."""
    return "".join(text.split())


def csv_rows(text: str) -> list[dict[str, str]]:
    """A CSV export parsed as it would be by an auditor's tool."""
    return list(csv.DictReader(StringIO(text, newline="")))
