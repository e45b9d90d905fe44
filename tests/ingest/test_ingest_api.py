"""The device ingest endpoint: formats, validation, quarantine, idempotency, provenance."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from app.db import session_factory
from audit.models import AuditEntry
from device_ingest import pipeline, views
from device_ingest.models import (
    Device,
    DeviceClass,
    EvaluationRequest,
    IngestRejection,
    MedicationEvent,
    Reading,
)
from tests.conftest import World
from tests.ingest.conftest import (
    HL7_BP,
    OMH,
    DeviceClient,
    at,
    bp,
    bundle,
    hr,
    omh_point,
)


@pytest.fixture
def db(engine: Engine) -> Iterator[Session]:
    """A fresh read session per use, so the test never holds SQLite's write lock."""
    with session_factory(engine)() as session:
        yield session


def _count(db: Session, model: type[Any], **where: Any) -> int:
    stmt = select(func.count()).select_from(model)
    for k, v in where.items():
        stmt = stmt.where(getattr(model, k) == v)
    with session_factory(db.get_bind())() as s:  # type: ignore[arg-type]
        return int(s.scalar(stmt) or 0)


def _readings(db: Session) -> list[Reading]:
    with session_factory(db.get_bind())() as s:  # type: ignore[arg-type]
        return list(s.scalars(select(Reading).order_by(Reading.id)))


def _omh_cases(kind: str) -> list[tuple[str, str, Path]]:
    cases = []
    for path in sorted(OMH.glob(f"*/*/{kind}/*.json")):
        name, version = path.parts[-4], path.parts[-3]
        cases.append((name, version, path))
    return cases


def test_conformance_folders_when_read_are_present() -> None:
    assert len(_omh_cases("shouldPass")) >= 20
    assert len(_omh_cases("shouldFail")) >= 10
    assert HL7_BP.exists()


@pytest.mark.parametrize(
    ("name", "version", "path"),
    _omh_cases("shouldPass"),
    ids=lambda v: v if isinstance(v, str) else v.name,
)
def test_omh_should_pass_when_posted_is_stored_with_values(
    device: DeviceClient, db: Session, name: str, version: str, path: Path
) -> None:
    body = json.loads(path.read_text())
    r = device.post(omh_point(name, version, body), content_type="application/json")
    assert r.status_code == 201, r.text
    assert r.json()["accepted"] + r.json()["quarantined"] == 1
    (row,) = _readings(db)
    assert row.source_format == "omh"
    assert row.code == f"omh:{name}:{version}"
    if name == "blood-pressure":
        assert row.systolic == body["systolic_blood_pressure"]["value"]
        assert row.diastolic == body["diastolic_blood_pressure"]["value"]
        assert row.unit == "mm[Hg]"
    else:
        assert row.value == body["heart_rate"]["value"]
        assert row.unit == "/min"
    assert row.statistic == body.get("descriptive_statistic")


@pytest.mark.parametrize(
    ("name", "version", "path"),
    _omh_cases("shouldFail"),
    ids=lambda v: v if isinstance(v, str) else v.name,
)
def test_omh_should_fail_when_posted_is_4xx_and_stores_nothing(
    device: DeviceClient, db: Session, name: str, version: str, path: Path
) -> None:
    body = json.loads(path.read_text())
    r = device.post(omh_point(name, version, body), content_type="application/json")
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["path"]
    assert _count(db, Reading) == 0
    assert _count(db, IngestRejection) == 1  # kept with its reason


def test_hl7_example_when_subject_is_own_patient_keeps_date_precision(
    device: DeviceClient, db: Session, client: TestClient, world: World
) -> None:
    obs = json.loads(HL7_BP.read_text())
    obs["subject"] = {"reference": f"Patient/{device.patient_id}"}
    r = device.post(obs)
    assert r.status_code == 201, r.text
    (row,) = _readings(db)
    assert (row.systolic, row.diastolic) == (107.0, 60.0)
    assert (row.effective_precision, row.effective_raw) == ("day", "2012-09-17")
    search = client.get(
        f"/fhir/R4/Observation?patient={device.patient_id}", headers=world.auth("clina")
    ).json()
    assert search["entry"][0]["resource"]["effectiveDateTime"] == "2012-09-17"


def test_observation_when_subject_is_other_patient_is_refused(
    device: DeviceClient, db: Session, world: World
) -> None:
    r = device.post(bp(subject=f"Patient/{world.patients['pb1'].id}"))
    assert r.status_code == 403
    assert r.json()["code"] == "subject_mismatch"
    assert _count(db, Reading) == 0


def test_transaction_when_one_entry_bad_stores_nothing(device: DeviceClient, db: Session) -> None:
    entries = [bp(120 + i, 80, at(10 + i)) for i in range(5)]
    entries[3]["component"][0]["valueQuantity"]["value"] = "high"
    r = device.post(bundle("transaction", entries))
    assert r.status_code == 422
    assert [e["index"] for e in r.json()["errors"]] == [3]
    assert "component" in r.json()["errors"][0]["path"]
    assert _count(db, Reading) == 0
    assert _count(db, IngestRejection) == 1


def test_batch_when_one_entry_bad_stores_the_rest_and_says_why(
    device: DeviceClient, db: Session
) -> None:
    entries = [bp(120 + i, 80, at(10 + i)) for i in range(5)]
    entries[3]["component"][0]["valueQuantity"]["value"] = "high"
    r = device.post(bundle("batch", entries))
    assert r.status_code == 200
    body = r.json()
    assert body["resourceType"] == "Bundle"
    assert body["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in body["entry"]]
    assert statuses == ["201 Created"] * 3 + ["422 Unprocessable Entity", "201 Created"]
    issue = body["entry"][3]["response"]["outcome"]["issue"][0]
    assert issue["severity"] == "error"
    assert _count(db, Reading) == 4
    assert _count(db, IngestRejection) == 1


def test_collection_when_posted_stores_each_entry(device: DeviceClient, db: Session) -> None:
    r = device.post(bundle("collection", [bp(when=at(5)), hr(when=at(5))]))
    assert r.status_code == 200
    assert r.json()["type"] == "batch-response"
    assert _count(db, Reading) == 2


def test_implausible_reading_when_posted_is_quarantined_and_listed(
    device: DeviceClient, db: Session, client: TestClient, world: World
) -> None:
    r = device.post(bundle("batch", [bp(400, 80, at(3)), bp(80, 120, at(4)), hr(350, at(5))]))
    outcomes = [e["response"]["outcome"]["issue"][0] for e in r.json()["entry"]]
    assert all(o["severity"] == "warning" for o in outcomes)
    rows = _readings(db)
    assert [row.quarantine_reasons for row in rows] == [
        ["sbp_out_of_range"],
        ["sbp_not_above_dbp"],
        ["hr_out_of_range"],
    ]
    report = client.get(
        f"/api/v1/patients/{device.patient_id}/quarantine", headers=world.auth("clina")
    ).json()
    assert len(report["quarantined"]) == 3
    search = client.get(
        f"/fhir/R4/Observation?patient={device.patient_id}", headers=world.auth("clina")
    ).json()
    assert search["total"] == 0  # quarantined readings never feed the model or search


def test_future_reading_when_beyond_skew_is_quarantined(device: DeviceClient, db: Session) -> None:
    r = device.post(bp(when=at(-30)))
    assert r.json()["quarantined"] == 1
    assert _readings(db)[0].quarantine_reasons == ["future_time"]


def test_kpa_reading_when_posted_is_converted(device: DeviceClient, db: Session) -> None:
    device.post(bp(16.0, 10.7, unit="kPa"))
    row = _readings(db)[0]
    assert row.systolic == pytest.approx(120.0, abs=0.1)
    assert row.diastolic == pytest.approx(80.3, abs=0.1)


def test_synthea_code_when_posted_is_accepted(device: DeviceClient, db: Session) -> None:
    assert device.post(bp(code="55284-4")).status_code == 201
    assert _readings(db)[0].code == "55284-4"


def test_resend_when_no_key_reports_duplicates(device: DeviceClient, db: Session) -> None:
    payload = bundle("batch", [bp(121, 81, at(20)), bp(122, 82, at(21))])
    device.post(payload)
    again = device.post(payload)
    assert [e["response"]["status"] for e in again.json()["entry"]] == ["200 OK", "200 OK"]
    assert _count(db, Reading) == 2


def test_idempotency_key_when_retried_replays_first_answer(
    device: DeviceClient, db: Session
) -> None:
    payload = bundle("batch", [bp(121, 81, at(20)), bp(122, 82, at(21))])
    first = device.post(payload, key="k-1")
    second = device.post(payload, key="k-1")
    assert second.status_code == first.status_code
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert _count(db, Reading) == 2


def test_idempotency_key_when_body_differs_is_409(device: DeviceClient) -> None:
    device.post(bp(121, 81, at(20)), key="k-2")
    r = device.post(bp(125, 81, at(20)), key="k-2")
    assert r.status_code == 409
    assert r.json()["code"] == "idempotency_key_reused"


def test_idempotency_key_when_refusal_retried_replays_refusal(
    device: DeviceClient, db: Session
) -> None:
    bad = bp()
    del bad["status"]
    first = device.post(bad, key="k-3")
    second = device.post(bad, key="k-3")
    assert first.status_code == second.status_code == 422
    assert _count(db, IngestRejection) == 1


def test_body_when_too_many_entries_is_413(device: DeviceClient, world: World, db: Session) -> None:
    limit = world.settings.ingest_max_entries
    payload = bundle("batch", [hr(60 + i % 50, at(i % 1000 + 1)) for i in range(limit + 1)])
    r = device.post(payload)
    assert r.status_code == 413
    assert r.json()["code"] == "too_many_entries"
    assert _count(db, Reading) == 0


@pytest.mark.parametrize(
    ("raw", "ctype", "status", "code"),
    [
        (b"{not json", "application/fhir+json", 400, "invalid_json"),
        (b'{"value": NaN}', "application/json", 400, "invalid_json"),
        (b"\xff\xfe", "application/json", 400, "invalid_json"),
        (b"{}", "text/plain", 415, "unsupported_media_type"),
        (b"[]", "application/json", 422, "empty_request"),
        (b'{"resourceType": "Patient"}', "application/fhir+json", 422, "unsupported_resource"),
    ],
)
def test_body_when_malformed_is_4xx_with_reason(
    device: DeviceClient, db: Session, raw: bytes, ctype: str, status: int, code: str
) -> None:
    r = device.post(None, raw=raw, content_type=ctype)
    assert r.status_code == status, r.text
    assert r.json()["code"] == code
    assert _count(db, IngestRejection) == 1


def test_medication_administration_when_posted_is_stored(device: DeviceClient, db: Session) -> None:
    taken = {
        "resourceType": "MedicationAdministration",
        "status": "completed",
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "17767"}]
        },
        "subject": {"reference": f"Patient/{device.patient_id}"},
        "effectiveDateTime": at(30),
    }
    missed = {
        **taken,
        "status": "not-done",
        "effectiveDateTime": at(60 * 24),
        "statusReason": [{"text": "forgot"}],
    }
    r = device.post(bundle("batch", [taken, missed]))
    assert r.status_code == 200, r.text
    with session_factory(db.get_bind())() as s:  # type: ignore[arg-type]
        events = list(s.scalars(select(MedicationEvent).order_by(MedicationEvent.id)))
    assert [e.taken for e in events] == [True, False]
    assert events[1].reason == "forgot"


def test_provenance_when_stored_keeps_device_format_hash_and_time(
    make_device: Callable[..., DeviceClient], db: Session
) -> None:
    watch = make_device("pa1", DeviceClass.CUFFLESS_WEARABLE)
    watch.post(bp(131, 84))
    row = _readings(db)[0]
    assert row.device_id == watch.device_id
    assert row.device_class == "cuffless_wearable"
    assert row.source_format == "fhir"
    assert len(row.payload_sha256) == 64
    assert row.received_at.tzinfo is not None


def test_calibration_when_set_is_applied_and_recorded(
    device: DeviceClient, client: TestClient, world: World, db: Session
) -> None:
    r = client.patch(
        f"/api/v1/devices/{device.device_id}",
        headers=world.auth("clina"),
        json={
            "calibration_systolic": -4,
            "calibration_diastolic": 2,
            "firmware_version": "2.1",
            "reason": "clinic comparison",
        },
    )
    assert r.status_code == 200, r.text
    device.post(bp(130, 80))
    row = _readings(db)[0]
    assert (row.systolic, row.diastolic) == (126.0, 82.0)
    assert (row.calibration_systolic, row.calibration_diastolic) == (-4.0, 2.0)
    assert row.firmware_version == "2.1"


def test_calibration_when_changed_during_parsing_applies_the_new_offsets(
    device: DeviceClient, engine: Engine, db: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_parse = views._parse

    def parse_then_recalibrate(*args: Any) -> Any:
        parsed = real_parse(*args)
        # A clinician recalibrates while the request is parsed (no transaction is held).
        with session_factory(engine)() as s:
            row = s.get(Device, device.device_id)
            assert row is not None
            row.calibration_systolic = 5.0
            s.commit()
        return parsed

    monkeypatch.setattr(views, "_parse", parse_then_recalibrate)
    device.post(bp(130, 80))
    row = _readings(db)[0]
    assert (row.systolic, row.calibration_systolic) == (135.0, 5.0)


def test_ingest_when_authorizing_leaves_the_sqlite_writer_slot_free(
    device: DeviceClient, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("the writer slot is SQLite's")
    lock_path = f"{engine.url.database}-writer.lock"
    held_while_authorizing: list[bool] = []
    real_find = pipeline.find_idempotent

    def find_and_probe(session: Session, **kwargs: Any) -> Any:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            held_while_authorizing.append(False)
        except BlockingIOError:
            held_while_authorizing.append(True)
        finally:
            os.close(fd)
        return real_find(session, **kwargs)

    monkeypatch.setattr(pipeline, "find_idempotent", find_and_probe)
    assert device.post(bp(), key="k-1").status_code == 201
    # The idempotency lookup runs in the authorization snapshot; later lookups write.
    assert held_while_authorizing[0] is False


def test_natural_key_when_computed_matches_the_stored_formula(
    device: DeviceClient, db: Session
) -> None:
    # Stored keys must never change meaning: a resend after an upgrade is still a duplicate.
    when = "2025-03-01T08:00:00Z"
    device.post(bp(130.5, 80, when))
    row = _readings(db)[0]
    text = "|".join(
        [
            device.device_id,
            "blood_pressure",
            "85354-9",
            when,
            "2025-03-01T08:00:00+00:00",
            "130.5",
            "80.0",
            "None",
            "None",
        ]
    )
    assert row.natural_key == hashlib.sha256(text.encode()).hexdigest()


def test_accepted_batch_when_stored_is_handed_to_the_loop(
    device: DeviceClient, db: Session
) -> None:
    device.post(bundle("batch", [bp(when=at(5)), bp(400, 80, at(6))]))
    with session_factory(db.get_bind())() as s:  # type: ignore[arg-type]
        pending = list(s.scalars(select(EvaluationRequest)))
    assert [(p.patient_id, p.status, p.reason) for p in pending] == [
        (device.patient_id, "pending", "new_readings")
    ]


def test_ingest_when_done_is_one_audit_entry_with_count_and_hash(
    device: DeviceClient, db: Session
) -> None:
    before = _count(db, AuditEntry)
    device.post(bundle("batch", [bp(when=at(i + 1)) for i in range(7)]))
    assert _count(db, AuditEntry) == before + 1
    with session_factory(db.get_bind())() as s:  # type: ignore[arg-type]
        entry = s.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).one()
    details = json.loads(entry.details)
    assert entry.action == "observation.ingest"
    assert entry.patient_id == device.patient_id
    assert details["count"] == 7
    assert len(details["payload_sha256"]) == 64


def test_device_endpoint_when_key_revoked_refuses(
    device: DeviceClient, client: TestClient, world: World
) -> None:
    client.post(f"/api/v1/devices/{device.device_id}/revoke", headers=world.auth("pa1"))
    assert device.post(bp()).status_code == 401


def test_device_endpoint_when_patient_token_used_refuses(client: TestClient, world: World) -> None:
    r = client.post(
        "/api/v1/device/observations",
        content=json.dumps(bp()),
        headers={**world.auth("pa1"), "Content-Type": "application/fhir+json"},
    )
    assert r.status_code == 403
    assert r.json()["code"] == "device_key_required"


def test_bundle_entry_when_method_is_delete_is_refused(device: DeviceClient, db: Session) -> None:
    payload = bundle("batch", [bp(when=at(3)), bp(when=at(4))])
    payload["entry"][1]["request"]["method"] = "DELETE"
    r = device.post(payload)
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses == ["201 Created", "422 Unprocessable Entity"]
    assert _count(db, Reading) == 1


def test_rejection_when_kept_stores_payload_that_matches_its_hash(
    device: DeviceClient, db: Session
) -> None:
    import hashlib

    bad = bp()
    del bad["status"]
    device.post(bundle("batch", [bad]))
    with session_factory(db.get_bind())() as s:  # type: ignore[arg-type]
        (row,) = s.scalars(select(IngestRejection)).all()
    assert hashlib.sha256(row.payload.encode()).hexdigest() == row.payload_sha256


def test_device_when_revoked_cannot_be_recalibrated(
    device: DeviceClient, client: TestClient, world: World
) -> None:
    client.post(f"/api/v1/devices/{device.device_id}/revoke", headers=world.auth("admin"))
    r = client.patch(
        f"/api/v1/devices/{device.device_id}",
        headers=world.auth("clina"),
        json={"calibration_systolic": 2, "reason": "x"},
    )
    assert r.status_code == 409
