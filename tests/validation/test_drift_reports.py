"""Drift reports end to end: features read from stored readings, the job's report with its
files, the monitoring API and portal pages, their access rules and audit entries."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import insert, select

import app.portal.monitoring  # noqa: F401 - registers the drift pages on the portal router
from app.patients import service as patients
from app.patients.models import Patient, Sex
from device_ingest import service as devices
from device_ingest.models import DeviceClass, MedicationEvent, Reading
from device_ingest.simulator import Cohort, DayOutput, FirmwareDrift, Scenario
from loops import service as loops
from loops.models import Evaluation, Proposal
from loops.review.models import Decision
from mlops import dataset, registry, snapshots
from mlops.features import FEATURE_NAMES
from mlops.models import ModelStatus
from tests.conftest import World
from tests.portal.conftest import sign_in
from tests.validation.drift_sim import A_AND_D, OMRON, as_of, frame, simulate
from validation import monitoring, service, views
from validation.models import DriftReport

Stored = tuple[Cohort, list[DayOutput], datetime]


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    """A reference cohort as the stored ones are kept: cuff readings and doses only."""
    return frame(*simulate(300, seed=7), cuff_only=True, symptoms=False)


@pytest.fixture
def api(app: FastAPI) -> FastAPI:
    """The app with the monitoring router (until app.main lists it)."""
    if not any(getattr(r, "path", "").startswith(views.PREFIX) for r in app.routes):
        app.include_router(views.router)
    return app


@pytest.fixture
def web(api: FastAPI) -> Iterator[TestClient]:
    with TestClient(api, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def store(world: World) -> Callable[..., Stored]:
    """Store a simulated cohort's cuff readings, doses, regimens and a scored evaluation."""

    def run(n: int, seed: int, scenario: Scenario | None = None) -> Stored:
        cohort, outputs = simulate(n, seed, scenario=scenario)
        when = as_of(outputs)
        s = world.session
        ladders = {}
        ids: dict[str, tuple[str, str]] = {}
        for p in cohort.patients:
            patient = patients.register_patient(
                s,
                pseudonym=p.pseudonym,
                given_name="Sim",
                family_name=p.pseudonym,
                birth_date=date(when.year - p.age, 1, 1),
                sex=Sex(p.sex),
                has_diabetes=p.diabetes,
                has_ckd=p.ckd,
            )
            key = (p.drug, p.ladder_mg)
            if key not in ladders:
                ladders[key] = loops.create_ladder(s, drug=p.drug, steps=list(p.ladder_mg))
            loops.start_regimen(s, patient_id=patient.id, ladder=ladders[key], step=p.start_step)
            # Registered as the simulator's ingestion does (app.simulate): the maker apart
            # from the model, so readings store "UA-651" and the report names "A&D UA-651".
            maker, _, model = p.cuff_model.partition(" ")
            device, _ = devices.register(
                s,
                patient_id=patient.id,
                device_class=DeviceClass.VALIDATED_CUFF,
                manufacturer=maker,
                model=model,
                firmware_version="1.0",
            )
            ids[p.pseudonym] = (patient.id, device.id)
        readings, doses = [], []
        for out in outputs:
            for r in out.readings():
                if r.device_kind != "validated_cuff":
                    continue
                pid, did = ids[r.pseudonym]
                readings.append(
                    {
                        "patient_id": pid,
                        "device_id": did,
                        "batch_id": 1,
                        "device_class": "validated_cuff",
                        "device_model": cohort_model(cohort, r.pseudonym).partition(" ")[2],
                        "firmware_version": "1.0",
                        "kind": "blood_pressure",
                        "code": "85354-9",
                        "effective_start": r.time,
                        "effective_precision": "second",
                        "effective_raw": r.time.isoformat(),
                        "systolic": r.systolic,
                        "diastolic": r.diastolic,
                        "unit": "mm[Hg]",
                        "status": "quarantined" if r.artifact else "accepted",
                        "quarantine_reasons": ["implausible"] if r.artifact else [],
                        "source_format": "fhir",
                        "payload_sha256": "0" * 64,
                        "received_at": r.time,
                        "natural_key": _key(f"{did}-{r.time.isoformat()}"),
                        "context": {},
                        "calibration_systolic": 0.0,
                        "calibration_diastolic": 0.0,
                    }
                )
            for e in out.medication_events():
                pid, did = ids[e.pseudonym]
                doses.append(
                    {
                        "patient_id": pid,
                        "device_id": did,
                        "batch_id": 1,
                        "medication": e.drug,
                        "taken": e.taken,
                        "effective_start": e.time,
                        "effective_precision": "second",
                        "effective_raw": e.time.isoformat(),
                        "payload_sha256": "0" * 64,
                        "received_at": e.time,
                        "natural_key": _key(f"{did}-dose-{e.time.isoformat()}"),
                    }
                )
        s.execute(insert(Reading), readings)
        s.execute(insert(MedicationEvent), doses)
        for pid, _ in ids.values():
            s.add(
                Evaluation(
                    patient_id=pid,
                    trigger="daily",
                    as_of=when - timedelta(days=1),
                    model_version="stub:v1",
                    outcome="hold",
                    created_at=when - timedelta(days=1),
                )
            )
        s.commit()
        return cohort, outputs, when

    return run


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def cohort_model(cohort: Cohort, pseudonym: str) -> str:
    return next(p.cuff_model for p in cohort.patients if p.pseudonym == pseudonym)


def _report(world: World, stored: Stored, reference: pd.DataFrame) -> DriftReport:
    report = service.run_drift_job(
        session=world.session, now=stored[2], settings=world.settings, reference=reference
    )
    world.session.commit()
    return report


def test_current_frame_when_cohort_stored_equals_simulated_features(
    world: World, store: Callable[..., Stored]
) -> None:
    cohort, outputs, when = store(40, seed=5)
    window = monitoring.current_frame(world.session, start=when - timedelta(days=7), end=when)
    expected = frame(cohort, outputs, cuff_only=True, symptoms=False)
    pseudonyms = {
        pid: name for pid, name in world.session.execute(select(Patient.id, Patient.pseudonym))
    }
    got = window.frame.rename(index=pseudonyms).sort_index()
    assert window.evaluated_patients == 40
    assert window.recorded == {"hold": 40}
    pd.testing.assert_frame_equal(
        got[list(FEATURE_NAMES)], expected.sort_index()[list(FEATURE_NAMES)], check_names=False
    )
    assert got["device_model"].tolist() == expected.sort_index()["device_model"].tolist()
    assert set(got["device_firmware"]) == {"1.0"}


@pytest.mark.slow
def test_run_drift_job_when_firmware_drifts_alerts_and_names_device_model(
    world: World,
    store: Callable[..., Stored],
    reference: pd.DataFrame,
    count_audit: Callable[..., int],
) -> None:
    drifting = Scenario(firmware_drift=FirmwareDrift(A_AND_D, from_day=7))
    stored = store(200, seed=11, scenario=drifting)
    report = service.run_drift_job(
        session=world.session, now=stored[2], settings=world.settings, reference=reference
    )
    assert world.session.in_transaction()  # the job commits, not the service
    world.session.commit()
    assert report.status == "alert"
    assert "segment_drift" in report.summary["reasons"]
    (attribution,) = report.summary["attributions"]
    assert (attribution["dimension"], attribution["value"]) == ("device_model", A_AND_D)
    assert attribution["steady_siblings"] == [OMRON]
    moved = {f["column"] for f in attribution["features"]}
    assert "cuff_dbp_mean_7d" in moved
    assert all(
        f["test"] == "K-S p_value" and f["score"] < f["threshold"] for f in attribution["features"]
    )
    assert A_AND_D in report.headline
    assert OMRON not in report.headline
    assert count_audit(action="drift_report.create", resource_id=str(report.id)) == 1


def test_run_drift_job_when_window_steady_stores_ok_report_with_files(
    world: World, store: Callable[..., Stored], reference: pd.DataFrame
) -> None:
    report = _report(world, store(40, seed=5), reference)
    assert report.status == "ok"
    assert report.current_rows == 40
    assert report.reference.startswith("supplied:")
    for relative, sha in (
        (report.html_path, report.html_sha256),
        (report.json_path, report.json_sha256),
    ):
        assert relative is not None
        data = (world.settings.data_dir / relative).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha
    assert report.summary["override"]["reason"] == "too_few_decisions"


def test_run_drift_job_when_no_model_and_no_reference_stores_no_reference(world: World) -> None:
    report = service.run_drift_job(
        session=world.session,
        now=datetime(2026, 12, 6, tzinfo=UTC),
        settings=world.settings,
    )
    assert (report.status, report.html_path, report.json_path) == ("no_reference", None, None)
    assert report.summary["reference"]["error"] == "no production model"


def test_reference_frame_when_model_registered_rebuilds_training_data_and_caches_it(
    world: World, tmp_path: Path
) -> None:
    data = dataset.build(n_patients=20, days=28, seed=3)
    version = registry.register(
        world.session,
        name=registry.TITRATION,
        artifact_path=tmp_path / "m.json",
        artifact_sha256="0" * 64,
        data_hash=data.data_hash,
        feature_names=data.feature_names,
        params=dict(data.params),
        metrics={},
        privacy={},
        created_by="test",
        status=ModelStatus.PRODUCTION,
    )
    built = monitoring.reference_frame(version, cache_dir=tmp_path / "cache")
    _assert_one_row_per_patient(built, data.X, data.groups, left_out={"P-0010", "P-0020"})
    assert set(built["device_model"]) <= {A_AND_D, OMRON}
    assert list((tmp_path / "cache").glob("reference-*.parquet"))
    version.data_hash = "f" * 64
    with pytest.raises(monitoring.ReferenceUnavailable, match="data hash"):
        monitoring.reference_frame(version, cache_dir=tmp_path / "other")


def _assert_one_row_per_patient(
    built: pd.DataFrame, X: np.ndarray, groups: np.ndarray, *, left_out: set[str]
) -> None:
    """`built` holds one of the training rows of each patient but those `left_out`."""
    # A training set holds each patient at several times; counted as independent rows they
    # made traits that never change (CKD, age band) look drifted on an unchanged cohort.
    assert len(set(groups.tolist())) < len(groups)  # the training set repeats patients
    rows: dict[str, list[tuple[float, ...]]] = {}
    for g, x in zip(groups.tolist(), np.nan_to_num(X, nan=-1.0).tolist(), strict=True):
        rows.setdefault(str(g), []).append(tuple(x))
    kept = {g: r for g, r in rows.items() if g not in left_out}
    assert len(kept) < len(rows)
    values = np.nan_to_num(built[list(FEATURE_NAMES)].to_numpy(), nan=-1.0).tolist()
    assert len(values) == len(kept)
    owners = [next(g for g, r in kept.items() if tuple(v) in r) for v in values]
    assert sorted(owners) == sorted(kept)


@pytest.fixture
def stored_report(
    world: World, store: Callable[..., Stored], reference: pd.DataFrame
) -> DriftReport:
    """A committed ok report of a steady 40-patient window, with its files."""
    return _report(world, store(40, seed=5), reference)


def test_drift_api_when_ml_engineer_reads_lists_report_detail_and_files(
    web: TestClient, world: World, stored_report: DriftReport, count_audit: Callable[..., int]
) -> None:
    auth = world.auth("mleng")
    listing = web.get(views.PREFIX, headers=auth)
    assert listing.status_code == 200
    assert [r["id"] for r in listing.json()["items"]] == [stored_report.id]
    one = web.get(f"{views.PREFIX}/{stored_report.id}", headers=auth)
    assert one.status_code == 200
    body = one.json()
    assert body["status"] == "ok"
    assert body["summary"]["current"]["rows"] == 40
    assert body["links"]["html"].endswith("/html")
    page = web.get(body["links"]["html"], headers=auth)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "sandbox allow-scripts" in page.headers["content-security-policy"]
    assert "frame-ancestors 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "SAMEORIGIN"
    document = web.get(body["links"]["json"], headers=auth)
    assert document.status_code == 200
    assert document.json()["summary"]["current"]["rows"] == 40
    assert count_audit(action="drift_report.read", resource_id=str(stored_report.id)) == 1
    assert count_audit(action="drift_report.detail", resource_id=str(stored_report.id)) == 2
    assert count_audit(action="drift_report.list") == 1


@pytest.mark.parametrize(
    ("user", "path", "status"),
    [
        ("auditor", "", 200),
        ("auditor", "/{id}", 200),
        ("auditor", "/{id}/html", 403),  # summaries only
        ("auditor", "/{id}/json", 403),
        ("clina", "", 403),
        ("clina", "/{id}", 403),
        ("pa1", "/{id}", 403),
        ("admin", "", 403),
        ("mleng", "/999999", 404),
    ],
)
def test_drift_api_when_role_varies_answers_as_policy_says(
    web: TestClient, world: World, stored_report: DriftReport, user: str, path: str, status: int
) -> None:
    url = views.PREFIX + path.format(id=stored_report.id)
    assert web.get(url, headers=world.auth(user)).status_code == status


def test_drift_api_when_anonymous_refuses(web: TestClient, stored_report: DriftReport) -> None:
    assert web.get(views.PREFIX).status_code == 401


def test_drift_api_when_stored_html_changed_refuses(
    web: TestClient, world: World, stored_report: DriftReport
) -> None:
    assert stored_report.html_path is not None
    path = world.settings.data_dir / stored_report.html_path
    path.write_bytes(path.read_bytes() + b"<!-- changed -->")
    r = web.get(f"{views.PREFIX}/{stored_report.id}/html", headers=world.auth("mleng"))
    assert r.status_code == 409
    assert r.json()["code"] == "report_file_changed"


def test_drift_api_when_ml_engineer_posts_runs_report_and_audits_it(
    web: TestClient, world: World, count_audit: Callable[..., int]
) -> None:
    r = web.post(views.PREFIX, json={"window_days": 14}, headers=world.auth("mleng"))
    assert r.status_code == 201
    body = r.json()
    assert body["status"] == "no_reference"  # no production model in this database
    assert body["summary"]["window"]["days"] == 14
    assert count_audit(action="drift_report.create", resource_id=str(body["id"])) == 1


@pytest.mark.parametrize(("user", "status"), [("auditor", 403), ("clina", 403)])
def test_drift_api_when_not_ml_engineer_posts_refuses(
    web: TestClient, world: World, user: str, status: int
) -> None:
    assert web.post(views.PREFIX, json={}, headers=world.auth(user)).status_code == status


def test_drift_api_when_window_out_of_range_refuses(web: TestClient, world: World) -> None:
    r = web.post(views.PREFIX, json={"window_days": 0}, headers=world.auth("mleng"))
    assert r.status_code == 422


def test_drift_pages_when_ml_engineer_signed_in_show_report_and_sandboxed_frame(
    web: TestClient, stored_report: DriftReport, count_audit: Callable[..., int]
) -> None:
    sign_in(web, "mleng")
    listing = web.get("/portal/monitoring/drift")
    assert listing.status_code == 200
    assert f"/portal/monitoring/drift/{stored_report.id}" in listing.text
    assert "Run a report now" in listing.text
    assert 'href="/portal/monitoring/drift" aria-current="page"' in listing.text  # the nav
    page = web.get(f"/portal/monitoring/drift/{stored_report.id}")
    assert page.status_code == 200
    assert stored_report.headline in page.text
    assert 'sandbox="allow-scripts"' in page.text
    framed = web.get(f"/portal/monitoring/drift/{stored_report.id}/evidently")
    assert framed.status_code == 200
    assert "sandbox allow-scripts" in framed.headers["content-security-policy"]
    assert count_audit(action="drift_report.read", resource_id=str(stored_report.id)) == 1


def test_drift_pages_when_auditor_signed_in_show_summary_without_evidently(
    web: TestClient, stored_report: DriftReport
) -> None:
    sign_in(web, "auditor")
    page = web.get(f"/portal/monitoring/drift/{stored_report.id}")
    assert page.status_code == 200
    assert "<iframe" not in page.text
    assert "Run a report now" not in web.get("/portal/monitoring/drift").text
    assert web.get(f"/portal/monitoring/drift/{stored_report.id}/evidently").status_code == 403


def test_drift_pages_when_ml_engineer_runs_report_redirects_to_it(
    web: TestClient, world: World
) -> None:
    csrf = sign_in(web, "mleng")
    r = web.post(
        "/portal/monitoring/drift",
        data={"csrf_token": csrf, "window_days": "7"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert r.headers["location"].startswith("/portal/monitoring/drift/")
    assert web.get(r.headers["location"]).status_code == 200


def _decisions(world: World, when: datetime, *, kinds: list[str]) -> None:
    """Signed decisions at `when`, one per kind, each on its own proposal of pa1."""
    s = world.session
    pid = world.patients["pa1"].id
    ladder = loops.create_ladder(s, drug="amlodipine", steps=[2.5, 5.0, 10.0])
    regimen = loops.start_regimen(s, patient_id=pid, ladder=ladder)
    clinician = world.users["clina"].id or 0
    for kind in kinds:
        proposal = Proposal(
            patient_id=pid,
            regimen_id=regimen.id,
            model_version="titration:v1",
            feature_hash="0" * 64,
            features={},
            action="increase",
            from_step=0,
            to_step=1,
            from_dose=2.5,
            to_dose=5.0,
            probabilities={"increase": 0.8},
            confidence=0.8,
            explanation={},
            route="clinician_review",
            status={"approve": "approved", "modify": "modified", "reject": "rejected"}[kind],
            created_at=when,
        )
        s.add(proposal)
        s.flush()
        s.add(
            Decision(
                proposal_id=proposal.id,
                patient_id=pid,
                user_id=clinician,
                kind=kind,
                from_step=0,
                proposed_step=1,
                decided_step=1 if kind == "approve" else 0,
                from_dose=2.5,
                proposed_dose=5.0,
                decided_dose=5.0 if kind == "approve" else 2.5,
                feature_hash="0" * 64,
                features={},
                model_version="titration:v1",
                proposal_action="increase",
                probabilities={"increase": 0.8},
                confidence=0.8,
                label_action="increase" if kind == "approve" else "hold",
                signer_user_id=clinician,
                signer_printed_name="Clina",
                signer_username="clina",
                meaning="x",
                signed_at=when,
                record_hash="0" * 64,
                signature="0" * 64,
                key_id="0" * 64,
            )
        )
    s.commit()


def test_run_drift_job_when_overrides_rise_alerts_on_override_rate(
    world: World, count_audit: Callable[..., int]
) -> None:
    now = datetime(2026, 12, 6, tzinfo=UTC)
    _decisions(world, now - timedelta(days=10), kinds=["approve"] * 22 + ["modify"] * 3)
    _decisions(
        world, now - timedelta(days=2), kinds=["approve"] * 15 + ["reject"] * 5 + ["modify"] * 5
    )
    report = service.run_drift_job(session=world.session, now=now, settings=world.settings)
    world.session.commit()
    override = report.summary["override"]
    assert (override["current_overridden"], override["current_decided"]) == (10, 25)
    assert (override["previous_overridden"], override["previous_decided"]) == (3, 25)
    assert (override["alert"], override["reason"]) == (True, "increase")
    assert (report.status, report.summary["reasons"]) == ("alert", ["override_rate"])
    assert "override rate 40% (was 12%)" in report.headline


def test_reference_frame_when_model_retrained_on_snapshot_reads_the_snapshot(
    world: World, tmp_path: Path
) -> None:
    # A retrained model's data hash names its training snapshot: the reference is the
    # snapshot's rows, read from its hash-checked file, not a rebuilt simulated cohort.
    snapshot = snapshots.build_simulated(
        session=world.session,
        now=datetime(2026, 12, 6, tzinfo=UTC),
        actor="test",
        data_dir=tmp_path,
        n_patients=40,
        days=28,
        seed=3,
    )
    version = registry.register(
        world.session,
        name=registry.TITRATION,
        artifact_path=tmp_path / "m.json",
        artifact_sha256="0" * 64,
        data_hash=snapshot.content_hash,
        feature_names=FEATURE_NAMES,
        params={"snapshot_id": snapshot.id},
        metrics={},
        privacy={},
        created_by="test",
        status=ModelStatus.PRODUCTION,
    )
    built = monitoring.reference_frame(
        version, cache_dir=tmp_path / "cache", session=world.session, data_dir=tmp_path
    )
    data = snapshots.load(snapshot, data_dir=tmp_path)
    overtreated = {snapshots.patient_group(f"P-{i:04d}") for i in (10, 20, 30, 40)}
    _assert_one_row_per_patient(built, data.X, data.groups, left_out=overtreated)
    assert set(built["device_model"]) == {""}
    (tmp_path / snapshot.path).write_bytes(b"changed")
    with pytest.raises(monitoring.ReferenceUnavailable, match="snapshot"):
        monitoring.reference_frame(
            version, cache_dir=tmp_path / "other", session=world.session, data_dir=tmp_path
        )


class _ThreeActions:
    """A stand-in model whose predicted action cycles through decrease, hold and increase."""

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.array([np.roll([0.6, 0.3, 0.1], i % 3) for i in range(len(x))])


def test_analyse_when_predicted_action_has_three_values_tests_it_as_ordinal(
    world: World, store: Callable[..., Stored], reference: pd.DataFrame
) -> None:
    # The stored window carries device_firmware "1.0" (text) that the reference lacks, and
    # the predicted action takes all three values: as text labels tested by K-S, Evidently
    # raised a TypeError; as the ladder step (-1, 0, 1) it is an ordinal column like others.
    _, _, when = store(40, seed=5)
    window = monitoring.current_frame(world.session, start=when - timedelta(days=7), end=when)
    current = monitoring.with_predictions(window.frame, _ThreeActions())
    ref = monitoring.with_predictions(reference, _ThreeActions())
    assert "device_firmware" in current
    assert "device_firmware" not in ref
    assert set(current["predicted_action"]) == {-1.0, 0.0, 1.0}
    ref["p_increase"] = ref["p_increase"].astype(str)  # a column whose dtype differs
    analysis = monitoring.analyse(current, ref, html=False)
    by_column = {c.column: c for c in analysis.predictions}
    assert by_column["predicted_action"].method == "ks"
    assert 0.0 <= by_column["predicted_action"].score <= 1.0
    assert "p_decrease" in by_column
    assert analysis.skipped["p_increase"] == "dtype_mismatch"
    assert "device_firmware" not in str(analysis.evidently)
