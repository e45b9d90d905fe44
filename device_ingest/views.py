"""Device endpoints (device keys) and device administration (admins)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from app.api.deps import Access, Audience, SessionDep, require
from app.core.errors import ProblemError
from device_ingest import service
from device_ingest.models import Device, DeviceClass

router = APIRouter(prefix="/api/v1", tags=["devices"])


class DeviceRead(BaseModel):
    """A registered device (never its key)."""

    id: str
    patient_id: str
    device_class: DeviceClass
    manufacturer: str
    model: str
    firmware_version: str
    created_at: datetime
    revoked_at: datetime | None


class DeviceCreated(BaseModel):
    """A new device and its API key, shown this once."""

    device_id: str
    patient_id: str
    device_class: DeviceClass
    api_key: str


class DeviceCreate(BaseModel):
    """Register a device for a patient."""

    patient_id: str = Field(max_length=36)
    device_class: DeviceClass
    manufacturer: str = Field(default="", max_length=100)
    model: str = Field(default="", max_length=100)
    firmware_version: str = Field(default="", max_length=50)


def _read(d: Device) -> DeviceRead:
    return DeviceRead(
        id=d.id,
        patient_id=d.patient_id,
        device_class=d.device_class,
        manufacturer=d.manufacturer,
        model=d.model,
        firmware_version=d.firmware_version,
        created_at=d.created_at,
        revoked_at=d.revoked_at,
    )


@router.get("/device/me", response_model=DeviceRead)
def read_device_self(
    session: SessionDep,
    access: Annotated[Access, require("device_self", "read", audience=Audience.DEVICE)],
) -> DeviceRead:
    """The calling device's own registration (lets a device check its key)."""
    device = session.get(Device, access.principal.id)
    assert device is not None  # authenticated just now
    access.entry.resource_id = device.id
    access.entry.patient_id = device.patient_id
    session.commit()
    return _read(device)


@router.post("/admin/devices", response_model=DeviceCreated, status_code=201)
def register_device(
    body: DeviceCreate,
    session: SessionDep,
    access: Annotated[Access, require("device", "manage", audit_as="device.register")],
) -> DeviceCreated:
    """Register a device; the response holds its key, which is never shown again."""
    try:
        device, key = service.register(
            session,
            patient_id=body.patient_id,
            device_class=body.device_class,
            manufacturer=body.manufacturer,
            model=body.model,
            firmware_version=body.firmware_version,
            created_by=int(access.principal.id),
        )
    except service.DeviceError as exc:
        raise ProblemError(422, exc.code, str(exc)) from exc
    access.entry.resource_id = device.id
    access.entry.patient_id = device.patient_id
    access.entry.details = {"device_class": str(device.device_class)}
    session.commit()
    return DeviceCreated(
        device_id=device.id,
        patient_id=device.patient_id,
        device_class=device.device_class,
        api_key=key,
    )


@router.get("/admin/patients/{patient_id}/devices", response_model=list[DeviceRead])
def list_devices(
    patient_id: Annotated[str, Path(max_length=36)],
    session: SessionDep,
    access: Annotated[
        Access, require("device", "manage", patient_param="patient_id", audit_as="device.list")
    ],
) -> list[DeviceRead]:
    """A patient's registered devices."""
    devices = service.list_for_patient(session, patient_id=patient_id)
    access.entry.details = {"count": len(devices)}
    session.commit()
    return [_read(d) for d in devices]


@router.post("/admin/devices/{device_id}/revoke", response_model=DeviceRead)
def revoke_device(
    device_id: Annotated[str, Path(max_length=36)],
    session: SessionDep,
    access: Annotated[Access, require("device", "manage", audit_as="device.revoke")],
) -> DeviceRead:
    """Revoke a device key; it is refused from the next request on."""
    try:
        device = service.revoke(session, device_id=device_id)
    except service.DeviceError as exc:
        raise ProblemError(404, "not_found", str(exc)) from exc
    access.entry.resource_id = device.id
    access.entry.patient_id = device.patient_id
    session.commit()
    return _read(device)
