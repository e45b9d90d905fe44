"""Fixtures for the visit tests: readings, doses, regimens, alerts, goals, questions and
symptom reports on the standard world, at chosen times."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from app.core import clock
from device_ingest import service as devices
from device_ingest.models import DeviceClass, IngestBatch, MedicationEvent, Reading
from loops import service as loops
from loops.models import Alert, AlertStatus, MedicationRegimen
from tests.conftest import FrozenClock, World

# A fixed "now" for the visit tests: the clock is frozen here.
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
_keys = itertools.count()


def _enrol(world: World, now: datetime) -> None:
    # The cadence counts from enrolment when no review is on record.
    for p in world.patients.values():
        p.created_at = now - timedelta(days=10)
    world.session.commit()


@pytest.fixture
def clock_at(frozen_clock: FrozenClock, world: World) -> FrozenClock:
    """The service clock frozen at NOW; every patient enrolled 10 days before."""
    frozen_clock.now = NOW
    _enrol(world, NOW)
    return frozen_clock


@pytest.fixture
def live_clock(frozen_clock: FrozenClock, world: World) -> datetime:
    """The service clock frozen at the wall clock's current second (tokens stay valid);
    every patient enrolled 10 days before. Returns that time."""
    frozen_clock.now = frozen_clock.now.replace(microsecond=0)
    _enrol(world, frozen_clock.now)
    return frozen_clock.now


def _device(world: World, patient: str) -> tuple[str, int]:
    s = world.session
    pid = world.patients[patient].id
    device, _ = devices.register(s, patient_id=pid, device_class=DeviceClass.VALIDATED_CUFF)
    batch = IngestBatch(
        device_id=device.id,
        patient_id=pid,
        received_at=clock.utcnow(),
        content_type="x",
        source_format="fhir",
        body_sha256="0" * 64,
        body_bytes=0,
        entries=0,
    )
    s.add(batch)
    s.flush()
    return device.id, batch.id or 0


@pytest.fixture
def readings(world: World) -> Callable[..., None]:
    """Store validated-cuff readings at the given times (or twice a day for `days` days
    ending at `end`, at 07:00 and 19:00 UTC)."""

    def add(
        patient: str,
        sbp: float,
        dbp: float,
        *,
        days: int = 7,
        end: datetime | None = None,
        times: list[datetime] | None = None,
    ) -> None:
        s = world.session
        pid = world.patients[patient].id
        device_id, batch_id = _device(world, patient)
        end = end or clock.utcnow()
        if times is None:
            day0 = end.replace(hour=0, minute=0, second=0, microsecond=0)
            times = [
                day0 - timedelta(days=d) + timedelta(hours=h)
                for d in range(days)
                for h in (7, 19)
                if day0 - timedelta(days=d) + timedelta(hours=h) <= end
            ]
        for t in times:
            s.add(
                Reading(
                    patient_id=pid,
                    device_id=device_id,
                    batch_id=batch_id,
                    device_class=DeviceClass.VALIDATED_CUFF,
                    kind="blood_pressure",
                    code="85354-9",
                    effective_start=t,
                    effective_precision="second",
                    effective_raw=t.isoformat(),
                    systolic=sbp,
                    diastolic=dbp,
                    unit="mm[Hg]",
                    status="accepted",
                    quarantine_reasons=[],
                    source_format="fhir",
                    payload_sha256="0" * 64,
                    received_at=t,
                    natural_key=f"k{next(_keys)}",
                )
            )
        s.commit()

    return add


@pytest.fixture
def doses(world: World) -> Callable[..., None]:
    """Store dose events: `taken` then `missed`, one a day going back from `end`."""

    def add(patient: str, taken: int, missed: int, *, end: datetime | None = None) -> None:
        s = world.session
        pid = world.patients[patient].id
        device_id, batch_id = _device(world, patient)
        end = end or clock.utcnow()
        for i in range(taken + missed):
            t = end - timedelta(days=i, hours=1)
            s.add(
                MedicationEvent(
                    patient_id=pid,
                    device_id=device_id,
                    batch_id=batch_id,
                    medication="lisinopril",
                    taken=i < taken,
                    effective_start=t,
                    effective_precision="second",
                    effective_raw=t.isoformat(),
                    payload_sha256="0" * 64,
                    received_at=t,
                    natural_key=f"d{next(_keys)}",
                )
            )
        s.commit()

    return add


@pytest.fixture
def regimen(world: World) -> Callable[..., MedicationRegimen]:
    """Put a patient on lisinopril 5/10/20/40 mg at step 1, started (last changed) `changed`
    ago."""

    ladders: dict[str, int] = {}

    def make(patient: str, *, changed: timedelta = timedelta(days=365)) -> MedicationRegimen:
        s = world.session
        if "lisinopril" not in ladders:
            ladder = loops.create_ladder(s, drug="lisinopril", steps=[5.0, 10.0, 20.0, 40.0])
            ladders["lisinopril"] = ladder.id or 0
        from loops.models import TitrationLadder

        ladder_row = s.get(TitrationLadder, ladders["lisinopril"])
        assert ladder_row is not None
        r = loops.start_regimen(s, patient_id=world.patients[patient].id, ladder=ladder_row, step=1)
        r.started_at = r.last_changed_at = clock.utcnow() - changed
        s.commit()
        return r

    return make


@pytest.fixture
def alert(world: World) -> Callable[..., Alert]:
    """Store an open alert for a patient, raised `age` before NOW."""

    def make(
        patient: str,
        type_: str = "hypertensive_crisis",
        *,
        age: timedelta = timedelta(hours=2),
        status: AlertStatus = AlertStatus.OPEN,
        acknowledged: bool = False,
    ) -> Alert:
        pid = world.patients[patient].id
        now = clock.utcnow()
        a = Alert(
            patient_id=pid,
            type=type_,
            severity="critical" if type_ == "hypertensive_crisis" else "high",
            key=f"{pid}:{type_}:{next(_keys)}",
            status=status,
            detail="x",
            raised_at=now - age,
            acknowledged_at=now - age + timedelta(minutes=20) if acknowledged else None,
            resolved_at=now if status == AlertStatus.RESOLVED else None,
        )
        world.session.add(a)
        world.session.commit()
        return a

    return make
