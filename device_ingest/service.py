"""Device registration, key checks and revocation; daily summaries of stored readings."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.auth.security import device_key_matches, new_device_key, parse_device_key
from app.core import clock
from app.core.errors import ProblemError
from app.patients.models import Patient
from device_ingest.models import Device, DeviceClass, Reading, ReadingStatus


class DeviceError(ValueError):
    """A device request that cannot be carried out; `code` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def register(
    session: Session,
    *,
    patient_id: str,
    device_class: DeviceClass,
    manufacturer: str = "",
    model: str = "",
    firmware_version: str = "",
    created_by: int | None = None,
) -> tuple[Device, str]:
    """Register a device for a patient; returns it with its API key (shown once)."""
    if session.get(Patient, patient_id) is None:
        raise DeviceError("patient_not_found", "no such patient")
    key = new_device_key()
    device = Device(
        patient_id=patient_id,
        device_class=device_class,
        manufacturer=manufacturer,
        model=model,
        firmware_version=firmware_version,
        key_prefix=key.prefix,
        key_hash=key.key_hash,
        created_by=created_by,
    )
    session.add(device)
    session.flush()
    return device, key.key


def revoke(session: Session, *, device_id: str) -> Device:
    """Revoke a device's key at once; idempotent."""
    device = session.get(Device, device_id)
    if device is None:
        raise DeviceError("device_not_found", "no such device")
    if device.revoked_at is None:
        device.revoked_at = clock.utcnow()
        session.add(device)
        session.flush()
    return device


def update(
    session: Session,
    *,
    device: Device,
    firmware_version: str | None = None,
    calibration_systolic: float | None = None,
    calibration_diastolic: float | None = None,
) -> Device:
    """Record a firmware version or calibration offsets; later readings carry them."""
    if firmware_version is not None:
        device.firmware_version = firmware_version
    if calibration_systolic is not None:
        device.calibration_systolic = calibration_systolic
    if calibration_diastolic is not None:
        device.calibration_diastolic = calibration_diastolic
    session.add(device)
    session.flush()
    return device


def list_for_patient(session: Session, *, patient_id: str) -> list[Device]:
    """A patient's devices, newest first."""
    stmt = (
        select(Device)
        .where(col(Device.patient_id) == patient_id)
        .order_by(col(Device.created_at).desc())
    )
    return list(session.scalars(stmt))


def authenticate_key(session: Session, *, key: str) -> Device | None:
    """The active device owning this key, or None (unknown, malformed or revoked)."""
    prefix = parse_device_key(key)
    if prefix is None:
        return None
    device = session.scalars(select(Device).where(col(Device.key_prefix) == prefix)).first()
    if device is None or device.revoked_at is not None:
        return None
    return device if device_key_matches(key, device.key_hash) else None


class Means(BaseModel):
    """Mean blood pressure over some readings."""

    systolic: float | None
    diastolic: float | None
    n: int


class DaySummary(BaseModel):
    """One local day of a patient's readings, for the portal's trend views."""

    date: date
    cuff_am: Means
    cuff_pm: Means
    cuffless: Means
    heart_rate_mean: float | None
    steps: float | None
    readings: int
    quarantined: int


def _means(values: list[tuple[float, float]]) -> Means:
    if not values:
        return Means(systolic=None, diastolic=None, n=0)
    return Means(
        systolic=round(sum(v[0] for v in values) / len(values), 1),
        diastolic=round(sum(v[1] for v in values) / len(values), 1),
        n=len(values),
    )


def summary_window(from_: date | None, to: date | None, tz: str) -> tuple[ZoneInfo, date, date]:
    """Validate a summary request's time zone and day range (default: the last 30 days)."""
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ProblemError(422, "invalid_timezone", f"unknown time zone {tz!r}") from exc
    last = to or clock.utcnow().astimezone(zone).date()
    first = from_ or last - timedelta(days=29)
    if first > last or (last - first).days > 366:
        raise ProblemError(422, "invalid_range", "from must precede to, within 366 days")
    return zone, first, last


def daily_summaries(
    session: Session, *, patient_id: str, first: date, last: date, zone: ZoneInfo
) -> list[DaySummary]:
    """One summary per local day with readings, in order."""
    start = datetime.combine(first, time(), zone)
    end = datetime.combine(last + timedelta(days=1), time(), zone)
    rows = session.execute(
        select(
            col(Reading.effective_start),
            col(Reading.kind),
            col(Reading.device_class),
            col(Reading.status),
            col(Reading.systolic),
            col(Reading.diastolic),
            col(Reading.value),
            col(Reading.statistic),
        ).where(
            col(Reading.patient_id) == patient_id,
            col(Reading.effective_start) >= start,
            col(Reading.effective_start) < end,
        )
    ).all()
    days: dict[date, dict[str, Any]] = {}
    for when, kind, dclass, status, sbp, dbp, value, statistic in rows:
        local = when.astimezone(zone)
        day = days.setdefault(
            local.date(),
            {
                "am": [],
                "pm": [],
                "cuffless": [],
                "hr": [],
                "steps": 0.0,
                "has_steps": False,
                "n": 0,
                "q": 0,
            },
        )
        day["n"] += 1
        if status != ReadingStatus.ACCEPTED:
            day["q"] += 1
            continue
        if statistic:  # a summary over an interval, not a single measurement
            continue
        if kind == "blood_pressure" and sbp is not None and dbp is not None:
            if dclass == DeviceClass.VALIDATED_CUFF:
                day["am" if local.hour < 12 else "pm"].append((sbp, dbp))
            else:
                day["cuffless"].append((sbp, dbp))
        elif kind == "heart_rate" and value is not None:
            day["hr"].append(value)
        elif kind == "step_count" and value is not None:
            day["steps"] += value
            day["has_steps"] = True
    out = [
        DaySummary(
            date=d,
            cuff_am=_means(v["am"]),
            cuff_pm=_means(v["pm"]),
            cuffless=_means(v["cuffless"]),
            heart_rate_mean=round(sum(v["hr"]) / len(v["hr"]), 1) if v["hr"] else None,
            steps=v["steps"] if v["has_steps"] else None,
            readings=v["n"],
            quarantined=v["q"],
        )
        for d, v in sorted(days.items())
    ]
    return out
