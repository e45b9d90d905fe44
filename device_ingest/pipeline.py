"""The ingest pipeline: parsed entries in, stored readings and per-entry outcomes out."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson
from sqlalchemy.orm import Session

from app.core import clock
from device_ingest import bulk
from device_ingest.formats import (
    EntryInvalid,
    ParsedMedicationEvent,
    ParsedReading,
    ReadingKind,
    SourceFormat,
)
from device_ingest.models import (
    Device,
    EvaluationRequest,
    IdempotencyRecord,
    IngestBatch,
    IngestRejection,
    MedicationEvent,
    Reading,
    ReadingStatus,
)
from device_ingest.rules import quarantine_reasons

Parsed = ParsedReading | ParsedMedicationEvent


class EntryStatus(StrEnum):
    """What became of one entry of a request."""

    ACCEPTED = "accepted"
    QUARANTINED = "quarantined"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass
class EntryOutcome:
    """One entry's fate, with the id it was stored under or the error that refused it."""

    index: int
    status: EntryStatus
    resource: str = "Observation"
    id: int | None = None
    reasons: list[str] = field(default_factory=list)
    error: EntryInvalid | None = None
    http_status: int = 201


@dataclass
class IngestResult:
    """A request's outcome: the batch row and one outcome per entry, in order."""

    batch: IngestBatch
    outcomes: list[EntryOutcome]


class TransactionRejected(Exception):
    """An all-or-nothing request had a bad entry; nothing of it may be stored."""

    def __init__(self, outcomes: list[EntryOutcome]) -> None:
        super().__init__("transaction rejected")
        self.outcomes = outcomes


@dataclass(frozen=True)
class Limits:
    """Plausibility limits taken from settings."""

    max_future: timedelta
    max_age: timedelta | None


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256."""
    return hashlib.sha256(data).hexdigest()


def entry_hash(raw: object) -> str:
    """Hash of an entry's canonical JSON (sorted keys, compact UTF-8): each row's payload hash."""
    return sha256_hex(orjson.dumps(raw, option=orjson.OPT_SORT_KEYS, default=str))


def _subject_ok(subject: str | None, patient_id: str) -> bool:
    return subject is None or subject in {f"Patient/{patient_id}", f"urn:uuid:{patient_id}"}


def check_entries(items: list[Parsed | EntryInvalid], *, patient_id: str) -> list[EntryOutcome]:
    """Refuse malformed entries and entries about another patient (pure)."""
    outcomes = []
    for index, item in enumerate(items):
        if isinstance(item, EntryInvalid):
            outcomes.append(EntryOutcome(index, EntryStatus.REJECTED, error=item, http_status=422))
        elif not _subject_ok(item.subject, patient_id):
            err = EntryInvalid(
                "subject_mismatch", "the subject is not this device's patient", "subject"
            )
            outcomes.append(EntryOutcome(index, EntryStatus.REJECTED, error=err, http_status=403))
        else:
            resource = (
                "Observation" if isinstance(item, ParsedReading) else "MedicationAdministration"
            )
            outcomes.append(EntryOutcome(index, EntryStatus.ACCEPTED, resource=resource))
    return outcomes


def _natural_key(device_id: str, parts: tuple[object, ...]) -> str:
    return sha256_hex("|".join([device_id, *(str(p) for p in parts)]).encode())


def store(
    session: Session,
    *,
    device: Device,
    items: list[Parsed | EntryInvalid],
    raw_entries: list[object],
    source_format: SourceFormat,
    bundle_type: str,
    atomic: bool,
    body: bytes,
    content_type: str,
    limits: Limits,
    idempotency_key: str | None,
    request_id: str | None,
) -> IngestResult:
    """Store what is valid, quarantine what is implausible, keep what is refused.

    With `atomic`, one bad entry refuses the whole request (TransactionRejected) and the
    caller must roll back. Never commits.
    """
    now = clock.utcnow()
    outcomes = check_entries(items, patient_id=device.patient_id)
    if atomic and any(o.status is EntryStatus.REJECTED for o in outcomes):
        raise TransactionRejected(outcomes)
    batch = IngestBatch(
        device_id=device.id,
        patient_id=device.patient_id,
        received_at=now,
        content_type=content_type[:100],
        source_format=str(source_format),
        bundle_type=bundle_type,
        body_sha256=sha256_hex(body),
        body_bytes=len(body),
        entries=len(items),
        idempotency_key=idempotency_key,
        request_id=request_id,
    )
    session.add(batch)
    session.flush()
    assert batch.id is not None
    # Provenance: every row keeps the hash of the raw payload it arrived in (with batch_id).
    body_hash = batch.body_sha256
    reading_rows: dict[str, dict[str, Any]] = {}
    event_rows: dict[str, dict[str, Any]] = {}
    keyed: list[tuple[EntryOutcome, str]] = []
    for outcome, item, raw in zip(outcomes, items, raw_entries, strict=True):
        if outcome.status is EntryStatus.REJECTED:
            assert outcome.error is not None
            session.add(_rejection(device, now, request_id, outcome, raw))
            continue
        if isinstance(item, ParsedReading):
            key, row = _reading_row(device, item, batch.id, now, body_hash, limits, source_format)
            target = reading_rows
            if row["status"] == ReadingStatus.QUARANTINED:
                outcome.status = EntryStatus.QUARANTINED
                outcome.reasons = list(row["quarantine_reasons"])
        elif isinstance(item, ParsedMedicationEvent):
            key, row = _event_row(device, item, batch.id, now, body_hash)
            target = event_rows
        else:  # pragma: no cover - check_entries refused everything else
            continue
        if key in target:
            outcome.status, outcome.http_status = EntryStatus.DUPLICATE, 200
        else:
            target[key] = row
        keyed.append((outcome, key))
    stored: dict[str, int] = {}
    tables = (Reading.__table__, MedicationEvent.__table__)  # type: ignore[attr-defined]
    for table, rows in zip(tables, (reading_rows, event_rows), strict=True):
        stored.update(bulk.insert_new(session, table, list(rows.values()), batch_id=batch.id))
    for outcome, key in keyed:
        if outcome.status is EntryStatus.DUPLICATE:
            continue
        if key in stored:
            outcome.id = stored[key]
        else:  # stored by an earlier request: a resend
            outcome.status, outcome.http_status, outcome.reasons = EntryStatus.DUPLICATE, 200, []
    counts = {s: sum(1 for o in outcomes if o.status is s) for s in EntryStatus}
    batch.accepted = counts[EntryStatus.ACCEPTED]
    batch.quarantined = counts[EntryStatus.QUARANTINED]
    batch.duplicates = counts[EntryStatus.DUPLICATE]
    batch.rejected = counts[EntryStatus.REJECTED]
    session.add(batch)
    if batch.accepted:
        # The hand-off to the patient-AI loop commits with the readings: a restart between
        # accept and evaluation loses nothing, and the device never waits for the model.
        session.add(
            EvaluationRequest(
                patient_id=device.patient_id,
                batch_id=batch.id,
                reason="new_readings",
                created_at=now,
                available_at=now,
            )
        )
    session.flush()
    return IngestResult(batch, outcomes)


def _reading_row(
    device: Device,
    item: ParsedReading,
    batch_id: int,
    now: datetime,
    body_hash: str,
    limits: Limits,
    source_format: SourceFormat,
) -> tuple[str, dict[str, Any]]:
    key = _natural_key(
        device.id,
        (
            item.kind,
            item.code,
            item.effective.raw,
            item.effective.start.isoformat(),
            item.systolic,
            item.diastolic,
            item.value,
            item.statistic,
        ),
    )
    cal_s = cal_d = 0.0
    systolic, diastolic = item.systolic, item.diastolic
    if item.kind is ReadingKind.BLOOD_PRESSURE:
        cal_s, cal_d = device.calibration_systolic, device.calibration_diastolic
        systolic = None if systolic is None else round(systolic + cal_s, 1)
        diastolic = None if diastolic is None else round(diastolic + cal_d, 1)
    calibrated = ParsedReading(
        kind=item.kind,
        code=item.code,
        effective=item.effective,
        systolic=systolic,
        diastolic=diastolic,
        value=item.value,
        unit=item.unit,
        statistic=item.statistic,
    )
    reasons = quarantine_reasons(
        calibrated, now=now, max_future=limits.max_future, max_age=limits.max_age
    )
    row = {
        "patient_id": device.patient_id,
        "device_id": device.id,
        "batch_id": batch_id,
        "device_class": device.device_class,
        "device_model": device.model,
        "firmware_version": device.firmware_version,
        "kind": str(item.kind),
        "code": item.code,
        "effective_start": item.effective.start,
        "effective_end": item.effective.end,
        "effective_precision": str(item.effective.precision),
        "effective_raw": item.effective.raw[:120],
        "systolic": systolic,
        "diastolic": diastolic,
        "value": item.value,
        "unit": item.unit,
        "statistic": item.statistic,
        "calibration_systolic": cal_s,
        "calibration_diastolic": cal_d,
        "status": ReadingStatus.QUARANTINED if reasons else ReadingStatus.ACCEPTED,
        "quarantine_reasons": reasons,
        "source_format": str(source_format),
        "payload_sha256": body_hash,
        "received_at": now,
        "natural_key": key,
        "context": item.context,
    }
    return key, row


def _event_row(
    device: Device, item: ParsedMedicationEvent, batch_id: int, now: datetime, body_hash: str
) -> tuple[str, dict[str, Any]]:
    key = _natural_key(
        device.id,
        (
            "medication",
            item.medication,
            item.effective.raw,
            item.effective.start.isoformat(),
            item.taken,
        ),
    )
    return key, {
        "patient_id": device.patient_id,
        "device_id": device.id,
        "batch_id": batch_id,
        "medication": item.medication[:200],
        "taken": item.taken,
        "reason": None if item.reason is None else item.reason[:200],
        "effective_start": item.effective.start,
        "effective_precision": str(item.effective.precision),
        "effective_raw": item.effective.raw[:120],
        "payload_sha256": body_hash,
        "received_at": now,
        "natural_key": key,
    }


def _rejection(
    device: Device, now: datetime, request_id: str | None, outcome: EntryOutcome, raw: object
) -> IngestRejection:
    assert outcome.error is not None
    # Stored exactly as hashed (canonical: sorted keys, compact), so the hash checks out.
    payload = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS, default=str).decode()
    return IngestRejection(
        device_id=device.id,
        patient_id=device.patient_id,
        received_at=now,
        request_id=request_id,
        entry_index=outcome.index,
        code=outcome.error.code,
        path=outcome.error.path[:300],
        message=outcome.error.message,
        payload_sha256=entry_hash(raw),
        payload=payload,
    )


def record_refusal(
    session: Session,
    *,
    device: Device,
    outcomes: list[EntryOutcome],
    raw_entries: list[object],
    body: bytes,
    request_id: str | None,
    whole: EntryInvalid | None = None,
) -> int:
    """Keep a refused request's bad entries (or the whole body) with their reasons."""
    now = clock.utcnow()
    if whole is not None:
        session.add(
            IngestRejection(
                device_id=device.id,
                patient_id=device.patient_id,
                received_at=now,
                request_id=request_id,
                entry_index=None,
                code=whole.code,
                path=whole.path[:300],
                message=whole.message,
                payload_sha256=sha256_hex(body),
                payload=body.decode("utf-8", errors="replace"),
            )
        )
        return 1
    count = 0
    for outcome in outcomes:
        if outcome.status is EntryStatus.REJECTED:
            session.add(_rejection(device, now, request_id, outcome, raw_entries[outcome.index]))
            count += 1
    return count


def find_idempotent(session: Session, *, principal: str, key: str) -> IdempotencyRecord | None:
    """The stored answer for this caller's key, if any."""
    return session.get(IdempotencyRecord, (principal, key))


def claim_idempotency(
    session: Session, *, principal: str, key: str, request_sha256: str
) -> IdempotencyRecord:
    """Insert the key first: a concurrent duplicate waits on it, then replays our answer."""
    record = IdempotencyRecord(
        principal=principal,
        key=key,
        request_sha256=request_sha256,
        status_code=0,
        content_type="",
        response_body="",
        created_at=clock.utcnow(),
    )
    session.add(record)
    session.flush()
    return record
