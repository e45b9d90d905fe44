"""Fixtures for the goals and care-plan tests: a fixed clock, patients on a ladder with an
envelope, and hand-built readings, dose events and goals."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.core import clock
from device_ingest import service as devices
from device_ingest.models import DeviceClass, IngestBatch, MedicationEvent, Reading
from loops import service as loops
from loops.models import MedicationRegimen
from policies.envelope import EnvelopeRules, TitrationAction
from tests.conftest import FrozenClock, World

# The fixed "now" of the hand-computed cohort (in the past, so tokens made at the real time
# are still valid when the app's clock is frozen here).
NOW = datetime(2026, 11, 15, 18, 0, tzinfo=UTC)
STEPS = [5.0, 10.0, 20.0, 40.0]


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """A time on a day of November 2026, UTC."""
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def _key(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


@dataclass
class Data:
    """Writes hand-built device data for a patient."""

    session: Session
    world: World

    def _batch(self, patient: str, device_class: DeviceClass) -> tuple[str, str, int]:
        pid = self.world.patients[patient].id
        device, _ = devices.register(self.session, patient_id=pid, device_class=device_class)
        batch = IngestBatch(
            device_id=device.id,
            patient_id=pid,
            received_at=NOW,
            content_type="application/fhir+json",
            source_format="fhir",
            body_sha256="0" * 64,
            body_bytes=0,
            entries=0,
        )
        self.session.add(batch)
        self.session.flush()
        return pid, device.id, batch.id or 0

    def bp(
        self,
        patient: str,
        rows: list[tuple[datetime, float, float]],
        *,
        device_class: DeviceClass = DeviceClass.VALIDATED_CUFF,
        status: str = "accepted",
    ) -> None:
        """Blood-pressure readings (time, systolic, diastolic)."""
        pid, device_id, batch_id = self._batch(patient, device_class)
        for t, sbp, dbp in rows:
            self.session.add(
                Reading(
                    patient_id=pid,
                    device_id=device_id,
                    batch_id=batch_id,
                    device_class=device_class,
                    kind="blood_pressure",
                    code="85354-9",
                    effective_start=t,
                    effective_precision="second",
                    effective_raw=t.isoformat(),
                    systolic=sbp,
                    diastolic=dbp,
                    unit="mm[Hg]",
                    status=status,
                    quarantine_reasons=["implausible"] if status != "accepted" else [],
                    source_format="fhir",
                    payload_sha256="0" * 64,
                    received_at=t,
                    natural_key=_key(device_id, t, sbp, dbp),
                )
            )
        self.session.commit()

    def steps(
        self, patient: str, rows: list[tuple[datetime, float]], status: str = "accepted"
    ) -> None:
        """Step counts (time, steps)."""
        pid, device_id, batch_id = self._batch(patient, DeviceClass.OTHER)
        for t, value in rows:
            self.session.add(
                Reading(
                    patient_id=pid,
                    device_id=device_id,
                    batch_id=batch_id,
                    device_class=DeviceClass.OTHER,
                    kind="step_count",
                    code="41950-7",
                    effective_start=t,
                    effective_precision="second",
                    effective_raw=t.isoformat(),
                    value=value,
                    unit="/d",
                    status=status,
                    quarantine_reasons=[],
                    source_format="fhir",
                    payload_sha256="0" * 64,
                    received_at=t,
                    natural_key=_key(device_id, "steps", t, value),
                )
            )
        self.session.commit()

    def doses(self, patient: str, rows: list[tuple[datetime, bool]]) -> None:
        """Dose events (time, taken)."""
        pid, device_id, batch_id = self._batch(patient, DeviceClass.OTHER)
        for t, taken in rows:
            self.session.add(
                MedicationEvent(
                    patient_id=pid,
                    device_id=device_id,
                    batch_id=batch_id,
                    medication="lisinopril",
                    taken=taken,
                    effective_start=t,
                    effective_precision="second",
                    effective_raw=t.isoformat(),
                    payload_sha256="0" * 64,
                    received_at=t,
                    natural_key=_key(device_id, "dose", t),
                )
            )
        self.session.commit()


@pytest.fixture
def data(world: World) -> Data:
    """Hand-built device data."""
    return Data(world.session, world)


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> FrozenClock:
    """The app's clock at NOW."""
    fc = FrozenClock(NOW)
    monkeypatch.setattr(clock, "utcnow", fc)
    return fc


@pytest.fixture
def regimens(world: World) -> dict[str, MedicationRegimen]:
    """Lisinopril 5/10/20/40 mg at step 1 for pa1, pa2 and pb1, each with envelope v1
    (holds and one-step increases; team A's by clina, team B's by clinb)."""
    s = world.session
    ladder = loops.create_ladder(s, drug="lisinopril", steps=STEPS, rxnorm_code="29046")
    out = {}
    for key in ("pa1", "pa2", "pb1"):
        pid = world.patients[key].id
        out[key] = loops.start_regimen(s, patient_id=pid, ladder=ladder, step=1)
        loops.add_envelope_version(
            s,
            patient_id=pid,
            rules=EnvelopeRules(
                auto_actions=frozenset({TitrationAction.HOLD, TitrationAction.INCREASE}),
                max_dose_step=3,
            ),
            author_id=world.users["clina" if key.startswith("pa") else "clinb"].id or 0,
            reason="start",
            effective_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
    s.commit()
    return out


Call = Callable[..., Any]


def _wall_clock() -> datetime:
    return datetime.now(UTC)


def api(client: TestClient, world: World, user: str) -> Call:
    """A caller bound to a user's bearer token, issued at the real time (PyJWT checks a
    token's times against the wall clock, whatever the app's frozen clock says)."""
    frozen = clock.utcnow
    clock.utcnow = _wall_clock
    try:
        headers = world.auth(user)
    finally:
        clock.utcnow = frozen

    def call(method: str, path: str, **kw: Any) -> Any:
        return client.request(method, path, headers={**headers, **kw.pop("headers", {})}, **kw)

    return call
