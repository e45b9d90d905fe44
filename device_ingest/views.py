"""Device endpoints: ingestion (device keys), device management, and the readings read side."""

from __future__ import annotations

import threading
from datetime import date, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlmodel import col

from app.api.deps import Access, Audience, SessionDep, SettingsDep, query_patient, require
from app.auth.principal import Principal
from app.core import clock
from app.core.context import current_request_id
from app.core.errors import PROBLEM_JSON, ProblemError, problem_response
from audit import service as audit
from audit.models import Outcome
from device_ingest import fhir, omh, pipeline, serialize, service
from device_ingest.formats import EntryInvalid, ReadingKind, SourceFormat, parse_fhir_datetime
from device_ingest.models import Device, DeviceClass, IngestRejection, Reading, ReadingStatus
from device_ingest.service import DaySummary, daily_summaries, summary_window

router = APIRouter(prefix="/api/v1", tags=["devices"])
fhir_router = APIRouter(prefix="/fhir/R4", tags=["fhir"])
FHIR_JSON = "application/fhir+json"
# Parsing is pure CPU under the GIL: threads parsing side by side in one process only trade
# the interpreter back and forth (slower in sum). One at a time; run more server processes
# to use more cores.
_PARSE_GATE = threading.Lock()


# ---------------------------------------------------------------------------- ingestion


async def raw_body(request: Request) -> bytes:
    """The request body as sent (the body-size middleware has already bounded it)."""
    return await request.body()


def _device_patient(session: Session, request: Request, principal: Principal) -> str | None:
    return principal.patient_id


def _load_json(body: bytes) -> Any:
    # orjson: strict RFC 8259 (no NaN/Infinity), UTF-8 checked, nesting bounded, and an
    # order of magnitude faster than json on 1,000-reading bodies.
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EntryInvalid("invalid_json", f"the body is not valid JSON: {exc}") from None


class _Parsed:
    """A request body parsed into entries, with how they must be stored."""

    def __init__(
        self,
        fmt: SourceFormat,
        bundle_type: str,
        raw: list[Any],
        items: list[pipeline.Parsed | EntryInvalid],
        atomic: bool,
    ) -> None:
        self.format, self.bundle_type, self.raw, self.items = fmt, bundle_type, raw, items
        self.atomic = atomic


def _parse(content_type: str, body: bytes, max_entries: int) -> _Parsed:
    if content_type not in {FHIR_JSON, "application/json"}:
        raise ProblemError(
            415,
            "unsupported_media_type",
            "send application/fhir+json (FHIR R4) or application/json (Open mHealth)",
        )
    doc = _load_json(body)
    if content_type == FHIR_JSON:
        payload = fhir.parse_payload(doc)
        raw = list(payload.entries)
        _check_count(len(raw), max_entries)
        items: list[pipeline.Parsed | EntryInvalid] = []
        for index, entry in enumerate(raw):
            request = payload.requests[index] if index < len(payload.requests) else None
            if request is not None and request.method not in {"POST", "PUT"}:
                # Devices only add readings: a DELETE or GET entry is not an observation.
                items.append(
                    EntryInvalid(
                        "unsupported_method",
                        f"entry {index}: request.method {request.method} "
                        "is not accepted; send POST",
                        f"entry/{index}/request/method",
                    )
                )
                continue
            try:
                items.append(fhir.parse_resource(entry, index=index))
            except EntryInvalid as exc:
                items.append(exc)
        atomic = payload.kind in {"single", "transaction"}
        return _Parsed(
            SourceFormat.FHIR, "" if payload.kind == "single" else payload.kind, raw, items, atomic
        )
    else:
        raw = doc if isinstance(doc, list) else [doc]
        _check_count(len(raw), max_entries)
        parsed = omh.parse_data_points(doc, received_at=clock.utcnow())
        # One data point is all-or-nothing; a list is a batch of independent points.
        return _Parsed(
            SourceFormat.OMH,
            "list" if isinstance(doc, list) else "",
            raw,
            list(parsed),
            not isinstance(doc, list),
        )


def _prepare(
    parsed: _Parsed, facts: pipeline.DeviceFacts, limits: pipeline.Limits, postgres: bool
) -> pipeline.Prepared:
    return pipeline.prepare(
        device=facts,
        items=parsed.items,
        raw_entries=parsed.raw,
        source_format=parsed.format,
        atomic=parsed.atomic,
        limits=limits,
        postgres=postgres,
    )


def _check_count(n: int, max_entries: int) -> None:
    if n > max_entries:
        raise ProblemError(
            413, "too_many_entries", f"{n} entries; at most {max_entries} per request"
        )
    if n == 0:
        raise EntryInvalid("empty_request", "the request holds no entries")


def _error_item(o: pipeline.EntryOutcome) -> dict[str, Any]:
    assert o.error is not None
    return {
        "index": o.index,
        "code": o.error.code,
        "path": o.error.path,
        "message": o.error.message,
    }


def _summary(result: pipeline.IngestResult) -> dict[str, Any]:
    b = result.batch
    return {
        "batch_id": b.id,
        "accepted": b.accepted,
        "quarantined": b.quarantined,
        "duplicates": b.duplicates,
        "rejected": b.rejected,
        "entries": [
            {
                "index": o.index,
                "status": str(o.status),
                "resource": o.resource,
                "id": None if o.id is None else str(o.id),
                "reasons": o.reasons,
                **({"error": _error_item(o)} if o.error else {}),
            }
            for o in result.outcomes
        ],
    }


_STATUS_TEXT = {
    200: "200 OK",
    201: "201 Created",
    403: "403 Forbidden",
    422: "422 Unprocessable Entity",
}


def _bundle_response(result: pipeline.IngestResult, bundle_type: str) -> dict[str, Any]:
    entries = []
    for o in result.outcomes:
        response: dict[str, Any] = {"status": _STATUS_TEXT[o.http_status]}
        if o.id is not None:
            response["location"] = f"{o.resource}/{o.id}"
        if o.error is not None:
            code = "forbidden" if o.http_status == 403 else "invalid"
            response["outcome"] = serialize.outcome(
                "error", code, o.error.code, diagnostics=o.error.message, expression=o.error.path
            )
        elif o.reasons:
            response["outcome"] = serialize.outcome(
                "warning", "business-rule", "quarantined", diagnostics=", ".join(o.reasons)
            )
        elif o.status is pipeline.EntryStatus.DUPLICATE:
            response["outcome"] = serialize.outcome(
                "information", "duplicate", "duplicate", diagnostics="already stored"
            )
        entries.append({"response": response})
    kind = "transaction-response" if bundle_type == "transaction" else "batch-response"
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def _replay(record: Any, access: Access, session: Session) -> Response:
    key, status, body, media = (
        record.key,
        record.status_code,
        record.response_body,
        record.content_type,
    )
    access.entry.details = {"replayed": True, "idempotency_key": key, "status": status}
    if status >= 400:  # replaying a refusal is still a refusal
        access.entry.outcome = Outcome.FAILURE
    # The lookup may have run in the read-only authorization snapshot: write afresh.
    audit.end_read(session)
    session.commit()
    return Response(
        body, status_code=status, media_type=media, headers={"Idempotent-Replayed": "true"}
    )


@router.post(
    "/device/observations",
    status_code=201,
    responses={
        200: {"description": "Batch processed / nothing new stored"},
        201: {"description": "Readings stored"},
        409: {"description": "Idempotency-Key reused with a different body"},
        413: {"description": "Too many entries or body too large"},
        415: {"description": "Unsupported content type"},
        422: {"description": "Malformed input; nothing stored"},
    },
)
def ingest_observations(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    body: Annotated[bytes, Depends(raw_body)],
    access: Annotated[
        Access,
        require(
            "observation",
            "create",
            audience=Audience.DEVICE,
            patient_from=_device_patient,
            audit_as="observation.ingest",
            read_first=True,
        ),
    ],
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Response:
    """Accept readings from the calling device's patient: FHIR R4 or Open mHealth."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    request_sha = pipeline.sha256_hex(content_type.encode() + b"\n" + body)
    principal = access.principal.actor
    if idempotency_key is not None:
        found = pipeline.find_idempotent(session, principal=principal, key=idempotency_key)
        if found is not None:
            return _idempotent_answer(found, request_sha, access, session)
    access.entry.details = {
        "content_type": content_type,
        "payload_sha256": pipeline.sha256_hex(body),  # as on the batch and each reading
        "bytes": len(body),
    }
    facts = pipeline.current_device(session, device_id=access.principal.id)
    if facts is None:
        raise ProblemError(401, "device_key_invalid", "unknown or revoked device key")
    limits = pipeline.Limits(
        max_future=timedelta(minutes=settings.ingest_max_future_minutes),
        max_age=None
        if settings.ingest_max_age_days is None
        else timedelta(days=settings.ingest_max_age_days),
    )
    postgres = session.get_bind().dialect.name == "postgresql"
    # Parsing and building rows are the costly part and need no database: hold no
    # transaction meanwhile (on SQLite that would be the single writer slot).
    audit.end_read(session)
    refusal: EntryInvalid | None = None
    rejected: pipeline.TransactionRejected | None = None
    prepared: pipeline.Prepared | None = None
    status = 422
    try:
        with _PARSE_GATE:
            parsed = _parse(content_type, body, settings.ingest_max_entries)
            prepared = _prepare(parsed, facts, limits, postgres)
    except EntryInvalid as exc:
        refusal, status = exc, 400 if exc.code == "invalid_json" else 422
    except ProblemError as exc:  # 413 too many entries, 415 unsupported type: kept too
        refusal, status = EntryInvalid(exc.code, exc.detail), exc.status
    except pipeline.TransactionRejected as exc:
        rejected = exc
    # The write transaction: the device is read again, as it stands now.
    device = pipeline.current_device(session, device_id=access.principal.id)
    if device is None:
        raise ProblemError(401, "device_key_invalid", "unknown or revoked device key")
    if refusal is not None:
        return _refuse_whole(
            session, access, device, body, refusal, status, idempotency_key, request_sha
        )
    if rejected is not None:
        return _refuse_entries(
            session, access, device, body, parsed, rejected.outcomes, idempotency_key, request_sha
        )
    assert prepared is not None
    if device != prepared.device:
        # Recalibrated or re-assigned while we parsed (rare): build the rows again.
        prepared = _prepare(parsed, device, limits, postgres)
    if idempotency_key is not None:
        try:
            pipeline.claim_idempotency(
                session, principal=principal, key=idempotency_key, request_sha256=request_sha
            )
        except IntegrityError:
            # A concurrent request with this key committed first: answer as it did.
            session.rollback()
            found = pipeline.find_idempotent(session, principal=principal, key=idempotency_key)
            assert found is not None
            audit.requeue(session, access.entry)
            return _idempotent_answer(found, request_sha, access, session)
    result = pipeline.store(
        session,
        prepared=prepared,
        bundle_type=parsed.bundle_type,
        body=body,
        content_type=content_type,
        idempotency_key=idempotency_key,
        request_id=current_request_id(),
    )
    if parsed.bundle_type in {"transaction", "batch", "collection"}:
        payload, media, status = _bundle_response(result, parsed.bundle_type), FHIR_JSON, 200
    else:
        new = result.batch.accepted + result.batch.quarantined
        payload, media, status = _summary(result), "application/json", 201 if new else 200
    text = orjson.dumps(payload).decode()
    if idempotency_key is not None:
        _save_idempotent(session, principal, idempotency_key, status, media, text)
    b = result.batch
    access.entry.resource_type = "observation_batch"
    access.entry.resource_id = str(b.id)
    access.entry.details.update(
        {
            "format": str(parsed.format),
            "bundle_type": parsed.bundle_type,
            "count": b.entries,
            "accepted": b.accepted,
            "quarantined": b.quarantined,
            "duplicates": b.duplicates,
            "rejected": b.rejected,
            "idempotency_key": idempotency_key,
        }
    )
    session.commit()
    return Response(text, status_code=status, media_type=media)


def _idempotent_answer(found: Any, request_sha: str, access: Access, session: Session) -> Response:
    if found.request_sha256 != request_sha:
        raise ProblemError(
            409, "idempotency_key_reused", "this Idempotency-Key was used with a different request"
        )
    if found.status_code == 0:  # claimed by a request still running
        raise ProblemError(
            409,
            "request_in_progress",
            "a request with this Idempotency-Key is still being processed",
            headers={"Retry-After": "1"},
        )
    return _replay(found, access, session)


def _save_idempotent(
    session: Session, principal: str, key: str, status: int, media: str, text: str
) -> None:
    record = pipeline.find_idempotent(session, principal=principal, key=key)
    if record is None:
        record = pipeline.claim_idempotency(
            session, principal=principal, key=key, request_sha256=""
        )
    record.status_code, record.content_type, record.response_body = status, media, text
    session.add(record)


def _refuse_whole(
    session: Session,
    access: Access,
    device: pipeline.DeviceFacts,
    body: bytes,
    exc: EntryInvalid,
    status: int,
    key: str | None,
    request_sha: str,
) -> Response:
    errors = [{"index": None, "code": exc.code, "path": exc.path, "message": exc.message}]
    return _refusal(
        session,
        access,
        device,
        body,
        status,
        exc.code,
        str(exc.message),
        errors,
        key,
        request_sha,
        whole=exc,
    )


def _refuse_entries(
    session: Session,
    access: Access,
    device: pipeline.DeviceFacts,
    body: bytes,
    parsed: _Parsed,
    outcomes: list[pipeline.EntryOutcome],
    key: str | None,
    request_sha: str,
) -> Response:
    session.rollback()  # nothing of an all-or-nothing request is stored
    audit.requeue(session, access.entry)
    bad = [o for o in outcomes if o.status is pipeline.EntryStatus.REJECTED]
    status = 403 if all(o.http_status == 403 for o in bad) else 422
    code = "subject_mismatch" if status == 403 else "invalid_entries"
    detail = (
        f"{len(bad)} of {len(outcomes)} entries refused; nothing was stored"
        if len(outcomes) > 1
        else (bad[0].error.message if bad[0].error else code)
    )
    return _refusal(
        session,
        access,
        device,
        body,
        status,
        code,
        detail,
        [_error_item(o) for o in bad],
        key,
        request_sha,
        outcomes=outcomes,
        raw=parsed.raw,
    )


def _refusal(
    session: Session,
    access: Access,
    device: pipeline.DeviceFacts,
    body: bytes,
    status: int,
    code: str,
    detail: str,
    errors: list[dict[str, Any]],
    key: str | None,
    request_sha: str,
    *,
    whole: EntryInvalid | None = None,
    outcomes: list[pipeline.EntryOutcome] | None = None,
    raw: list[Any] | None = None,
) -> Response:
    kept = pipeline.record_refusal(
        session,
        device=device,
        outcomes=outcomes or [],
        raw_entries=raw or [],
        body=body,
        request_id=current_request_id(),
        whole=whole,
    )
    response = problem_response(status, code, detail, extra={"errors": errors})
    if key is not None:
        _save_idempotent(
            session, f"device:{device.id}", key, status, PROBLEM_JSON, bytes(response.body).decode()
        )
        record = pipeline.find_idempotent(session, principal=f"device:{device.id}", key=key)
        if record is not None and not record.request_sha256:
            record.request_sha256 = request_sha
    access.entry.outcome = Outcome.FAILURE
    access.entry.details.update({"code": code, "rejected": kept, "errors": errors[:20]})
    session.commit()
    return response


# ---------------------------------------------------------------------- device management


class DeviceRead(BaseModel):
    """A registered device (never its key)."""

    id: str
    patient_id: str
    device_class: DeviceClass
    manufacturer: str
    model: str
    firmware_version: str
    calibration_systolic: float
    calibration_diastolic: float
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

    device_class: DeviceClass
    manufacturer: str = Field(default="", max_length=100)
    model: str = Field(default="", max_length=100)
    firmware_version: str = Field(default="", max_length=50)


class DeviceUpdate(BaseModel):
    """A firmware update or a new calibration (offsets in mmHg, added to every reading)."""

    firmware_version: str | None = Field(default=None, max_length=50)
    calibration_systolic: float | None = Field(default=None, ge=-30, le=30)
    calibration_diastolic: float | None = Field(default=None, ge=-30, le=30)
    reason: str = Field(min_length=1, max_length=500)


def _read(d: Device) -> DeviceRead:
    return DeviceRead(
        id=d.id,
        patient_id=d.patient_id,
        device_class=d.device_class,
        manufacturer=d.manufacturer,
        model=d.model,
        firmware_version=d.firmware_version,
        calibration_systolic=d.calibration_systolic,
        calibration_diastolic=d.calibration_diastolic,
        created_at=d.created_at,
        revoked_at=d.revoked_at,
    )


def _device_owner(session: Session, request: Request, principal: Principal) -> str | None:
    device = session.get(Device, request.path_params.get("device_id", ""))
    return None if device is None else device.patient_id


def _device_or_404(session: Session, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise ProblemError(404, "not_found", "no such device in your scope")
    return device


@router.get("/device/me", response_model=DeviceRead)
def read_device_self(
    session: SessionDep,
    access: Annotated[Access, require("device_self", "read", audience=Audience.DEVICE)],
) -> DeviceRead:
    """The calling device's own registration (lets a device check its key)."""
    device = _device_or_404(session, access.principal.id)
    access.entry.resource_id = device.id
    access.entry.patient_id = device.patient_id
    session.commit()
    return _read(device)


@router.post("/patients/{patient_id}/devices", response_model=DeviceCreated, status_code=201)
def register_device(
    patient_id: Annotated[str, Path(max_length=36)],
    body: DeviceCreate,
    session: SessionDep,
    access: Annotated[
        Access, require("device", "manage", patient_param="patient_id", audit_as="device.register")
    ],
) -> DeviceCreated:
    """Register a device; the response holds its key, which is never shown again."""
    try:
        device, key = service.register(
            session,
            patient_id=patient_id,
            device_class=body.device_class,
            manufacturer=body.manufacturer,
            model=body.model,
            firmware_version=body.firmware_version,
            created_by=int(access.principal.id),
        )
    except service.DeviceError as exc:
        raise ProblemError(404, "not_found", str(exc)) from exc
    access.entry.resource_id = device.id
    access.entry.details = {"device_class": str(device.device_class), "model": device.model}
    session.commit()
    return DeviceCreated(
        device_id=device.id,
        patient_id=device.patient_id,
        device_class=device.device_class,
        api_key=key,
    )


@router.get("/patients/{patient_id}/devices", response_model=list[DeviceRead])
def list_devices(
    patient_id: Annotated[str, Path(max_length=36)],
    session: SessionDep,
    access: Annotated[
        Access, require("device", "read", patient_param="patient_id", audit_as="device.list")
    ],
) -> list[DeviceRead]:
    """A patient's registered devices, newest first."""
    devices = service.list_for_patient(session, patient_id=patient_id)
    access.entry.details = {"count": len(devices)}
    session.commit()
    return [_read(d) for d in devices]


@router.patch("/devices/{device_id}", response_model=DeviceRead)
def update_device(
    device_id: Annotated[str, Path(max_length=36)],
    body: DeviceUpdate,
    session: SessionDep,
    access: Annotated[
        Access, require("device", "manage", patient_from=_device_owner, audit_as="device.update")
    ],
) -> DeviceRead:
    """Record a firmware update or a calibration; later readings carry the new values."""
    device = _device_or_404(session, device_id)
    if device.revoked_at is not None:
        raise ProblemError(409, "device_revoked", "a revoked device cannot be changed")
    before = _read(device).model_dump(
        mode="json", include={"firmware_version", "calibration_systolic", "calibration_diastolic"}
    )
    service.update(
        session,
        device=device,
        firmware_version=body.firmware_version,
        calibration_systolic=body.calibration_systolic,
        calibration_diastolic=body.calibration_diastolic,
    )
    after = _read(device).model_dump(mode="json", include=set(before))
    access.entry.resource_id = device.id
    access.entry.details = {"before": before, "after": after, "reason": body.reason}
    session.commit()
    return _read(device)


@router.post("/devices/{device_id}/revoke", response_model=DeviceRead)
def revoke_device(
    device_id: Annotated[str, Path(max_length=36)],
    session: SessionDep,
    access: Annotated[
        Access, require("device", "revoke", patient_from=_device_owner, audit_as="device.revoke")
    ],
) -> DeviceRead:
    """Revoke a device key; it is refused from the next request on."""
    device = _device_or_404(session, device_id)
    service.revoke(session, device_id=device.id)
    access.entry.resource_id = device.id
    session.commit()
    return _read(device)


# ----------------------------------------------------------------------------- read side


_PREFIXES = ("ge", "le", "gt", "lt", "eq")


def _date_filters(values: list[str]) -> list[Any]:
    clauses = []
    for value in values:
        prefix = value[:2] if value[:2] in _PREFIXES else "eq"
        raw = value[2:] if value[:2] in _PREFIXES else value
        try:
            when = serialize_date(raw)
        except ValueError as exc:
            raise ProblemError(400, "invalid_search", f"date={value}: {exc}") from exc
        column = col(Reading.effective_start)
        clauses.append(
            {
                "ge": column >= when[0],
                "gt": column >= when[1],
                "le": column < when[1],
                "lt": column < when[0],
                "eq": (column >= when[0]) & (column < when[1]),
            }[prefix]
        )
    return clauses


def serialize_date(raw: str) -> tuple[datetime, datetime]:
    """The [start, end) span a FHIR search date names (a day, a month or an instant)."""
    parsed = parse_fhir_datetime(raw, "date")
    return parsed.start, parsed.end or parsed.start + timedelta(microseconds=1)


@fhir_router.get("/Observation")
def search_observations(
    request: Request,
    session: SessionDep,
    access: Annotated[
        Access,
        require("observation", "search", patient_from=query_patient, audit_as="observation.search"),
    ],
    code: Annotated[str | None, Query(max_length=100)] = None,
    date_: Annotated[list[str] | None, Query(alias="date", max_length=40)] = None,
    count: Annotated[int, Query(alias="_count", ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(alias="_offset", ge=0)] = 0,
) -> Response:
    """FHIR search over a patient's accepted readings: a paged `searchset` Bundle."""
    patient_id = access.patient_id
    if patient_id is None:
        raise ProblemError(400, "invalid_search", "the patient parameter is required")
    where = [col(Reading.patient_id) == patient_id, col(Reading.status) == ReadingStatus.ACCEPTED]
    if code:
        codes = [c.split("|")[-1] for c in code.split(",")]
        kinds = {
            "85354-9": ReadingKind.BLOOD_PRESSURE,
            "55284-4": ReadingKind.BLOOD_PRESSURE,
            "8867-4": ReadingKind.HEART_RATE,
            "41950-7": ReadingKind.STEP_COUNT,
            "55423-8": ReadingKind.STEP_COUNT,
        }
        wanted = {str(kinds[c]) for c in codes if c in kinds}
        where.append(col(Reading.kind).in_(wanted))
    where += _date_filters(date_ or [])
    total = session.scalar(select(func.count()).select_from(Reading).where(*where)) or 0
    rows = session.scalars(
        select(Reading)
        .where(*where)
        .order_by(col(Reading.effective_start), col(Reading.id))
        .limit(count)
        .offset(offset)
    ).all()
    base = str(request.url.remove_query_params("_offset"))
    links = [{"relation": "self", "url": str(request.url)}]
    if offset + count < total:
        sep = "&" if "?" in base else "?"
        links.append({"relation": "next", "url": f"{base}{sep}_offset={offset + count}"})
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": [
            {
                "fullUrl": f"Observation/{r.id}",
                "resource": serialize.observation(r),
                "search": {"mode": "match"},
            }
            for r in rows
        ],
    }
    access.entry.details = {"count": len(rows), "total": total, "offset": offset}
    session.commit()
    return JSONResponse(bundle, media_type=FHIR_JSON)


@router.get("/patients/{patient_id}/readings", response_model=list[DaySummary])
def daily_readings(
    patient_id: Annotated[str, Path(max_length=36)],
    session: SessionDep,
    access: Annotated[
        Access, require("readings", "read", patient_param="patient_id", audit_as="readings.read")
    ],
    from_: Annotated[date | None, Query(alias="from")] = None,
    to: Annotated[date | None, Query()] = None,
    tz: Annotated[str, Query(max_length=64)] = "UTC",
) -> list[DaySummary]:
    """Daily summaries: AM/PM validated-cuff means, cuffless means, counts, quarantined."""
    zone, first, last = summary_window(from_, to, tz)
    out = daily_summaries(session, patient_id=patient_id, first=first, last=last, zone=zone)
    access.entry.details = {"from": first.isoformat(), "to": last.isoformat(), "days": len(out)}
    session.commit()
    return out


class QuarantinedRead(BaseModel):
    """A quarantined reading with why it was held back."""

    id: int
    device_id: str
    device_class: str
    kind: str
    effective: str
    systolic: float | None
    diastolic: float | None
    value: float | None
    reasons: list[str]
    received_at: datetime


class RejectionRead(BaseModel):
    """A refused entry with its reason."""

    id: int
    device_id: str
    received_at: datetime
    entry_index: int | None
    code: str
    path: str
    message: str


class QuarantineReport(BaseModel):
    """What a patient's devices sent that was held back or refused."""

    quarantined: list[QuarantinedRead]
    rejected: list[RejectionRead]


@router.get("/patients/{patient_id}/quarantine", response_model=QuarantineReport)
def read_quarantine(
    patient_id: Annotated[str, Path(max_length=36)],
    session: SessionDep,
    access: Annotated[
        Access,
        require("quarantine", "read", patient_param="patient_id", audit_as="quarantine.read"),
    ],
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> QuarantineReport:
    """Quarantined readings and refused entries, newest first (care team and auditors)."""
    held = session.scalars(
        select(Reading)
        .where(
            col(Reading.patient_id) == patient_id, col(Reading.status) == ReadingStatus.QUARANTINED
        )
        .order_by(col(Reading.id).desc())
        .limit(limit)
    ).all()
    refused = session.scalars(
        select(IngestRejection)
        .where(col(IngestRejection.patient_id) == patient_id)
        .order_by(col(IngestRejection.id).desc())
        .limit(limit)
    ).all()
    access.entry.details = {"quarantined": len(held), "rejected": len(refused)}
    session.commit()
    return QuarantineReport(
        quarantined=[
            QuarantinedRead(
                id=r.id or 0,
                device_id=r.device_id,
                device_class=r.device_class,
                kind=r.kind,
                effective=r.effective_raw or clock.iso(r.effective_start),
                systolic=r.systolic,
                diastolic=r.diastolic,
                value=r.value,
                reasons=r.quarantine_reasons,
                received_at=r.received_at,
            )
            for r in held
        ],
        rejected=[
            RejectionRead(
                id=r.id or 0,
                device_id=r.device_id,
                received_at=r.received_at,
                entry_index=r.entry_index,
                code=r.code,
                path=r.path,
                message=r.message,
            )
            for r in refused
        ],
    )
