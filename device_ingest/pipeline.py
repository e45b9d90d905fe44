"""The ingest pipeline: parsed entries in, stored readings and per-entry outcomes out."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson
from sqlalchemy import bindparam, insert, select, update
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
    OutboxStatus,
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


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """The stored ingest_batches row's id and counts."""

    id: int
    entries: int
    accepted: int
    quarantined: int
    duplicates: int
    rejected: int


@dataclass
class IngestResult:
    """A request's outcome: the batch row's figures and one outcome per entry, in order."""

    batch: BatchSummary
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


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """What rows take from their device, read once: rows are built outside the transaction."""

    id: str
    patient_id: str
    device_class: str
    model: str
    firmware_version: str
    calibration_systolic: float
    calibration_diastolic: float


_DEVICE_TABLE = Device.__table__  # type: ignore[attr-defined]
_CURRENT_DEVICE = select(
    *(_DEVICE_TABLE.c[name] for name in DeviceFacts.__slots__),
).where(_DEVICE_TABLE.c.id == bindparam("device_id"), _DEVICE_TABLE.c.revoked_at.is_(None))


def current_device(session: Session, *, device_id: str) -> DeviceFacts | None:
    """The device's facts as they stand in this transaction; None if unknown or revoked."""
    row = session.execute(_CURRENT_DEVICE, {"device_id": device_id}).first()
    return None if row is None else DeviceFacts(*row)


@dataclass
class Prepared:
    """A request's rows built and its entries judged, before any database work."""

    device: DeviceFacts
    now: datetime
    source_format: SourceFormat
    entries: int
    outcomes: list[EntryOutcome]
    rejected: list[tuple[EntryOutcome, object]]
    reading_rows: dict[str, list[Any]]
    event_rows: dict[str, list[Any]]
    keyed: list[tuple[EntryOutcome, str]]


def prepare(
    *,
    device: DeviceFacts,
    items: list[Parsed | EntryInvalid],
    raw_entries: list[object],
    source_format: SourceFormat,
    atomic: bool,
    limits: Limits,
    postgres: bool,
) -> Prepared:
    """Judge every entry and build its row (pure): the costly part, done without a lock.

    With `atomic`, one bad entry refuses the whole request (TransactionRejected).
    """
    now = clock.utcnow()
    outcomes = check_entries(items, patient_id=device.patient_id)
    if atomic and any(o.status is EntryStatus.REJECTED for o in outcomes):
        raise TransactionRejected(outcomes)
    rows = _RowMaker(device, now, limits, source_format, bulk.Values(postgres=postgres))
    prepared = Prepared(device, now, source_format, len(items), outcomes, [], {}, {}, [])
    for outcome, item, raw in zip(outcomes, items, raw_entries, strict=True):
        if outcome.status is EntryStatus.REJECTED:
            prepared.rejected.append((outcome, raw))
            continue
        if isinstance(item, ParsedReading):
            key, row, reasons = rows.reading(item)
            target = prepared.reading_rows
            if reasons:
                outcome.status, outcome.reasons = EntryStatus.QUARANTINED, reasons
        elif isinstance(item, ParsedMedicationEvent):
            key, row = rows.event(item)
            target = prepared.event_rows
        else:  # pragma: no cover - check_entries refused everything else
            continue
        if key in target:
            outcome.status, outcome.http_status, outcome.reasons = EntryStatus.DUPLICATE, 200, []
        else:
            target[key] = row
        prepared.keyed.append((outcome, key))
    return prepared


def store(
    session: Session,
    *,
    prepared: Prepared,
    bundle_type: str,
    body: bytes,
    content_type: str,
    idempotency_key: str | None,
    request_id: str | None,
) -> IngestResult:
    """Store what is valid, quarantine what is implausible, keep what is refused.

    `prepared` must have been built from the device as it stands in this transaction.
    Never commits.
    """
    device, now, outcomes = prepared.device, prepared.now, prepared.outcomes
    body_sha256 = sha256_hex(body)
    counts = _counts(outcomes)  # final unless some rows turn out to be stored already
    # Core statements, not ORM objects: this runs once per request on the hot path.
    batch_id = int(
        session.execute(
            _INSERT_BATCH,
            {
                "device_id": device.id,
                "patient_id": device.patient_id,
                "received_at": now,
                "content_type": content_type[:100],
                "source_format": str(prepared.source_format),
                "bundle_type": bundle_type,
                "body_sha256": body_sha256,
                "body_bytes": len(body),
                "entries": prepared.entries,
                "idempotency_key": idempotency_key,
                "request_id": request_id,
                **counts,
            },
        ).scalar_one()
    )
    # Provenance: every row keeps the hash of the raw payload it arrived in (with batch_id).
    for rows in (prepared.reading_rows, prepared.event_rows):
        for row in rows.values():
            row[_BATCH_ID] = batch_id
            row[_PAYLOAD_HASH] = body_sha256
    for outcome, raw in prepared.rejected:
        session.add(_rejection(device, now, request_id, outcome, raw))
    stored: dict[str, int] = {}
    for table, columns, table_rows in (
        (Reading.__table__, READING_COLUMNS, prepared.reading_rows),  # type: ignore[attr-defined]
        (MedicationEvent.__table__, EVENT_COLUMNS, prepared.event_rows),  # type: ignore[attr-defined]
    ):
        stored.update(
            bulk.insert_new(session, table, columns, list(table_rows.values()), batch_id=batch_id)
        )
    for outcome, key in prepared.keyed:
        if outcome.status is EntryStatus.DUPLICATE:
            continue
        if key in stored:
            outcome.id = stored[key]
        else:  # stored by an earlier request: a resend
            outcome.status, outcome.http_status, outcome.reasons = EntryStatus.DUPLICATE, 200, []
    final = _counts(outcomes)
    if final != counts:
        session.execute(_UPDATE_COUNTS, {"batch": batch_id, **final})
    if final["accepted"]:
        # The hand-off to the patient-AI loop commits with the readings: a restart between
        # accept and evaluation loses nothing, and the device never waits for the model.
        session.execute(
            _INSERT_OUTBOX,
            {
                "patient_id": device.patient_id,
                "batch_id": batch_id,
                "reason": "new_readings",
                "status": str(OutboxStatus.PENDING),
                "created_at": now,
                "available_at": now,
                "attempts": 0,
            },
        )
    return IngestResult(BatchSummary(batch_id, prepared.entries, **final), outcomes)


def _counts(outcomes: list[EntryOutcome]) -> dict[str, int]:
    tally = dict.fromkeys(EntryStatus, 0)
    for o in outcomes:
        tally[o.status] += 1
    return {
        "accepted": tally[EntryStatus.ACCEPTED],
        "quarantined": tally[EntryStatus.QUARANTINED],
        "duplicates": tally[EntryStatus.DUPLICATE],
        "rejected": tally[EntryStatus.REJECTED],
    }


_BATCH_TABLE = IngestBatch.__table__  # type: ignore[attr-defined]
_OUTBOX_TABLE = EvaluationRequest.__table__  # type: ignore[attr-defined]
# Built once: statements made per request cost more than the inserts themselves.
_INSERT_BATCH = insert(_BATCH_TABLE).returning(_BATCH_TABLE.c.id)
_UPDATE_COUNTS = (
    update(_BATCH_TABLE)
    .where(_BATCH_TABLE.c.id == bindparam("batch"))
    .values(
        {name: bindparam(name) for name in ("accepted", "quarantined", "duplicates", "rejected")}
    )
)
_INSERT_OUTBOX = insert(_OUTBOX_TABLE)


# Columns every row of one request shares, then each row's own, in insert order.
_SHARED = (
    "patient_id",
    "device_id",
    "batch_id",
    "payload_sha256",
    "received_at",
)
_BATCH_ID, _PAYLOAD_HASH = 2, 3
READING_COLUMNS = (
    *_SHARED,
    "device_class",
    "device_model",
    "firmware_version",
    "source_format",
    "kind",
    "code",
    "effective_start",
    "effective_end",
    "effective_precision",
    "effective_raw",
    "systolic",
    "diastolic",
    "value",
    "unit",
    "statistic",
    "calibration_systolic",
    "calibration_diastolic",
    "status",
    "quarantine_reasons",
    "natural_key",
    "context",
)
EVENT_COLUMNS = (
    *_SHARED,
    "medication",
    "taken",
    "reason",
    "effective_start",
    "effective_precision",
    "effective_raw",
    "natural_key",
)


class _RowMaker:
    """Driver-ready rows for one request: what they share is converted once."""

    def __init__(
        self,
        device: DeviceFacts,
        now: datetime,
        limits: Limits,
        source_format: SourceFormat,
        values: bulk.Values,
    ) -> None:
        self.device_id = device.id
        self.now, self.limits, self.values = now, limits, values
        # batch_id and payload_sha256 are set by store() once the batch row exists.
        shared = (device.patient_id, device.id, None, None, values.time(now))
        self.reading_prefix = (
            *shared,
            device.device_class,
            device.model,
            device.firmware_version,
            str(source_format),
        )
        self.event_prefix = shared
        self.cal_s = device.calibration_systolic
        self.cal_d = device.calibration_diastolic

    def reading(self, item: ParsedReading) -> tuple[str, list[Any], list[str]]:
        """A reading's natural key, row (calibrated) and quarantine reasons."""
        effective = item.effective
        sbp, dbp = item.systolic, item.diastolic
        # The key is of the values as sent, before calibration: a resend matches. Same
        # text as _natural_key (an f-string renders these exactly as str() does).
        key = hashlib.sha256(
            f"{self.device_id}|{item.kind}|{item.code}|{effective.raw}|"
            f"{effective.start.isoformat()}|{sbp}|{dbp}|{item.value}|{item.statistic}".encode()
        ).hexdigest()
        cal_s = cal_d = 0.0
        calibrated = item
        if item.kind is ReadingKind.BLOOD_PRESSURE:
            # Stored pressures are calibrated and kept to 0.1 mmHg, calibration or not.
            cal_s, cal_d = self.cal_s, self.cal_d
            sbp_c = None if sbp is None else round(sbp + cal_s, 1)
            dbp_c = None if dbp is None else round(dbp + cal_d, 1)
            if sbp_c != sbp or dbp_c != dbp:
                calibrated = replace(item, systolic=sbp_c, diastolic=dbp_c)
        reasons = quarantine_reasons(
            calibrated, now=self.now, max_future=self.limits.max_future, max_age=self.limits.max_age
        )
        time, json = self.values.time, self.values.json
        row = [
            *self.reading_prefix,
            str(item.kind),
            item.code,
            time(effective.start),
            time(effective.end),
            str(effective.precision),
            effective.raw[:120],
            calibrated.systolic,
            calibrated.diastolic,
            item.value,
            item.unit,
            item.statistic,
            cal_s,
            cal_d,
            str(ReadingStatus.QUARANTINED if reasons else ReadingStatus.ACCEPTED),
            json(reasons),
            key,
            json(item.context),
        ]
        return key, row, reasons

    def event(self, item: ParsedMedicationEvent) -> tuple[str, list[Any]]:
        """A dose event's natural key and row."""
        effective = item.effective
        key = _natural_key(
            self.device_id,
            ("medication", item.medication, effective.raw, effective.start.isoformat(), item.taken),
        )
        row = [
            *self.event_prefix,
            item.medication[:200],
            item.taken,
            None if item.reason is None else item.reason[:200],
            self.values.time(effective.start),
            str(effective.precision),
            effective.raw[:120],
            key,
        ]
        return key, row


def _rejection(
    device: DeviceFacts, now: datetime, request_id: str | None, outcome: EntryOutcome, raw: object
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
    device: DeviceFacts,
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
