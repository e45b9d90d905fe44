"""Device registration, key checks and revocation."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.auth.security import device_key_matches, new_device_key, parse_device_key
from app.core import clock
from app.patients.models import Patient
from device_ingest.models import Device, DeviceClass


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
