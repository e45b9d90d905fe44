"""The monitoring summary against the database: drift findings from stored drift reports,
override rates per week from signed decisions, alerts by kind and severity, and the time to
acknowledge crisis alerts against the 15-minute target, over two weeks of a small clinic."""

from __future__ import annotations

import io
import re
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import pypdf
import pytest

from app.core.config import get_settings
from loops import service as loops
from loops.alerts import ESCALATE_AFTER, Severity
from loops.models import Alert, AlertStatus, Proposal, ProposalStatus
from loops.review import service as review
from loops.review.models import Decision
from mlops.models import Rollout, RolloutStatus
from reports import monitoring, render, service
from reports.models import Filters, Period, Report, ReportKind
from tests.conftest import World
from tests.reports.lifecycle_setup import cells, facts, rows, section
from validation import drift
from validation.models import DriftReport

MONDAY = datetime(2026, 11, 2, tzinfo=UTC)  # the period: two whole weeks from here
NOW = MONDAY + timedelta(days=30)
A_AND_D = "A&D UA-651"


def day(d: float, minutes: float = 0) -> datetime:
    """Monday 09:00 plus days and minutes."""
    return MONDAY + timedelta(days=d, hours=9, minutes=minutes)


def two_weeks() -> Period:
    return Period(MONDAY, MONDAY + timedelta(days=14))


class Clinic:
    """Decisions, alerts, drift reports and a model alert, at known times."""

    def __init__(self, world: World) -> None:
        self.world, self.s = world, world.session
        ladder = loops.create_ladder(self.s, drug="lisinopril", steps=[5.0, 10.0, 20.0])
        self.regimens = {
            key: loops.start_regimen(self.s, patient_id=p.id, ladder=ladder, step=1)
            for key, p in world.patients.items()
        }
        self.s.commit()
        # Week 1: 6 approved, 3 modified, 1 rejected (v1); week 2: 2 approved, 2 rejected (v2);
        # one outside the period.
        kinds = ["approve"] * 6 + ["modify"] * 3 + ["reject"]
        for k, kind in enumerate(kinds):
            self.decision(kind, day(k % 5, k), "titration:v1")
        for k, kind in enumerate(["approve", "approve", "reject", "reject"]):
            self.decision(kind, day(8 + k % 3, k), "titration:v2")
        self.decision("reject", day(20), "titration:v2")
        # Crisis alerts: acknowledged after 5, 20 and 12 minutes in week 1; in week 2 one
        # never acknowledged (escalated, automatically and by hand) and one after 3 minutes.
        clin = world.users["clina"]
        self.crisis = [
            self.alert("pa1", "hypertensive_crisis", "critical", day(0), ack=5),
            self.alert("pa2", "hypertensive_crisis", "critical", day(1), ack=20),
            self.alert("pb1", "hypertensive_crisis", "critical", day(2), ack=12),
            self.alert("pb2", "hypertensive_crisis", "critical", day(8)),
            self.alert("pa1", "hypertensive_crisis", "critical", day(9), ack=3, key="again"),
        ]
        loops.escalate_due(self.s, now=day(8, 16))
        review.escalate(
            self.s, alert_id=self.crisis[3].id, user=clin, note="to Dr B", now=day(8, 20)
        )
        self.alert("pa2", "persistent_low_bp", "high", day(3), ack=60)
        self.alert("pb1", "persistent_low_bp", "high", day(10))
        self.alert("pb2", "data_gap", "low", day(4), resolved=day(5))
        self.alert("pa2", "hypertensive_crisis", "critical", day(20), key="later")  # outside
        self.s.commit()
        self.ok = self.report(day(1), "ok", "titration:v1", {})
        self.alerting = self.report(day(8), "alert", "titration:v2", self.alert_summary())
        self.s.add(
            Rollout(
                model_name="titration",
                challenger_version=2,
                champion_version=1,
                status=RolloutStatus.ROLLED_BACK,
                percent=10,
                step_started_at=day(6),
                dwell_seconds=600,
                salt="s",
                started_by="cli:ops",
                started_at=day(6),
                ended_at=day(6, 30),
                end_reason="automatic rollback at canary 10%: error_rate 0.5 vs champion 0.0",
            )
        )
        self.s.commit()

    def decision(self, kind: str, when: datetime, version: str) -> None:
        key = "pa1"
        regimen = self.regimens[key]
        patient = self.world.patients[key]
        proposal = Proposal(
            patient_id=patient.id,
            regimen_id=regimen.id,
            model_version=version,
            feature_hash="a" * 64,
            features={},
            action="increase",
            from_step=1,
            to_step=2,
            from_dose=10.0,
            to_dose=20.0,
            probabilities={"decrease": 0.1, "hold": 0.2, "increase": 0.7},
            confidence=0.7,
            explanation={},
            route="clinician_review",
            reasons=[],
            status={"approve": ProposalStatus.APPROVED, "modify": ProposalStatus.MODIFIED}.get(
                kind, ProposalStatus.REJECTED
            ),
            created_at=when - timedelta(hours=1),
        )
        self.s.add(proposal)
        self.s.flush()
        clin = self.world.users["clina"]
        decided = {"approve": 2, "modify": 1, "reject": 1}[kind]
        self.s.add(
            Decision(
                proposal_id=proposal.id,
                patient_id=patient.id,
                user_id=clin.id or 0,
                kind=kind,
                from_step=1,
                proposed_step=2,
                decided_step=decided,
                from_dose=10.0,
                proposed_dose=20.0,
                decided_dose=[5.0, 10.0, 20.0][decided],
                feature_hash="a" * 64,
                features={},
                model_version=version,
                proposal_action="increase",
                probabilities=proposal.probabilities,
                confidence=0.7,
                label_action={"approve": "increase"}.get(kind, "hold"),
                signer_user_id=clin.id or 0,
                signer_printed_name=clin.full_name,
                signer_username=clin.username,
                meaning="approved as prescriber",
                signed_at=when,
                record_hash="0" * 64,
                signature="x",
                key_id="0" * 64,
            )
        )
        self.s.commit()

    def alert(
        self,
        patient: str,
        type_: str,
        severity: str,
        raised: datetime,
        *,
        ack: float | None = None,
        resolved: datetime | None = None,
        key: str = "",
    ) -> Alert:
        pid = self.world.patients[patient].id
        row = Alert(
            patient_id=pid,
            type=type_,
            severity=severity,
            key=f"{pid}:{type_}:{key}",
            detail="186/104 mmHg",
            raised_at=raised,
        )
        self.s.add(row)
        self.s.flush()
        if ack is not None:
            loops.acknowledge(
                self.s,
                alert=row,
                user_id=self.world.users["clina"].id or 0,
                note="seen",
                now=raised + timedelta(minutes=ack),
            )
        if resolved is not None:
            row.status, row.resolved_at = AlertStatus.RESOLVED, resolved
            self.s.add(row)
            self.s.flush()
        return row

    @staticmethod
    def alert_summary() -> dict[str, object]:
        """A drift report's summary as validation.service writes it (from drift's own forms)."""
        moved = drift.ColumnDrift("cuff_sbp_mean_7d", drift.Stattest.KS, 0.0004, 0.0025, 300, 80)
        steady = drift.ColumnDrift("cuff_sbp_mean_7d", drift.Stattest.KS, 0.4, 0.0025, 200, 40)
        located = drift.ColumnDrift("cuff_sbp_mean_7d", drift.Stattest.KS, 1e-6, 0.0025, 150, 40)
        predicted = drift.ColumnDrift(
            "predicted_action", drift.Stattest.CHI_SQUARE, 0.001, 0.0025, 300, 80
        )
        t = drift.Thresholds()
        override = drift.override_signal(
            current_overridden=12,
            current_decided=24,
            previous_overridden=2,
            previous_decided=25,
            thresholds=t,
        )
        attribution = drift.Attribution("device_model", A_AND_D, (located,), ("Omron HEM-7361T",))
        return {
            "reasons": ["feature_drift", "segment_drift", "prediction_drift", "override_rate"],
            "thresholds": asdict(t),
            "features": [
                moved.as_dict(),
                drift.ColumnDrift(
                    "heart_rate_mean_7d", drift.Stattest.KS, 0.3, 0.0025, 300, 80
                ).as_dict(),
            ],
            "predictions": [predicted.as_dict()],
            "segments": [],
            "attributions": [attribution.as_dict()],
            "override": override.as_dict(),
            "unused": steady.as_dict(),
        }

    def report(
        self, when: datetime, status: str, version: str, summary: dict[str, object]
    ) -> DriftReport:
        row = DriftReport(
            created_at=when,
            created_by="system:scheduler",
            window_start=when - timedelta(days=7),
            window_end=when,
            status=status,
            headline="Drift: device_model A&D UA-651: cuff_sbp_mean_7d (K-S p_value 1e-06)."
            if status == "alert"
            else "No drift found.",
            model_version=version,
            reference="training:" + "0" * 64,
            feature_set="clinaiops-features/2",
            reference_rows=300,
            current_rows=80,
            drifted_features=1 if status == "alert" else 0,
            summary=summary,
        )
        self.s.add(row)
        self.s.commit()
        return row


@pytest.fixture
def clinic(world: World) -> Clinic:
    return Clinic(world)


def summary_of(world: World, period: Period, version: int | None = None) -> Report:
    return monitoring.build(
        world.session,
        period=period,
        filters=Filters(model_version=version),
        generated_by="auditor",
        now=NOW,
        settings=world.settings,
    )


def test_build_lists_drift_reports_and_what_moved_where(world: World, clinic: Clinic) -> None:
    report = summary_of(world, two_weeks())

    assert report.kind is ReportKind.MONITORING
    reports = rows(report, "Drift reports")
    assert [(r["report"], r["status"], r["model"]) for r in reports] == [
        (f"#{clinic.ok.id}", "ok", "titration:v1"),
        (f"#{clinic.alerting.id}", "alert", "titration:v2"),
    ]
    assert reports[1]["headline"] == clinic.alerting.headline
    assert reports[1]["reasons"] == "feature_drift, segment_drift, prediction_drift, override_rate"
    found = {(r["where"], r["feature"]): r for r in rows(report, "Drift findings")}
    everyone = found[("all patients", "cuff_sbp_mean_7d")]
    assert (everyone["test"], everyone["score"], everyone["threshold"]) == (
        "K-S p_value",
        "0.0004",
        "0.0025",
    )
    assert (everyone["rows current"], everyone["rows reference"]) == ("80", "300")
    assert ("all patients", "heart_rate_mean_7d") not in found  # tested, not drifted
    device = found[(f"device_model={A_AND_D} (steady: Omron HEM-7361T)", "cuff_sbp_mean_7d")]
    assert device["score"] == "1e-06"
    assert found[("model outputs", "predicted_action")]["test"] == "chi-square p_value"
    (override,) = [r for r in found.values() if r["where"] == "clinicians' overrides"]
    assert override["feature"].startswith("override rate 0.5 (was 0.08")
    assert dict(report.summary)["drift reports"] == "2 (1 with a drift alert)"
    assert all(isinstance(c, str) for c in cells(report))


def test_build_counts_override_rates_per_week(world: World, clinic: Clinic) -> None:
    weeks = rows(summary_of(world, two_weeks()), "Override rates per week")

    assert [
        (w["from"], w["decided"], w["approved"], w["modified"], w["rejected"], w["override rate"])
        for w in weeks
    ] == [
        ("2026-11-02T00:00:00Z", "10", "6", "3", "1", "40.0%"),
        ("2026-11-09T00:00:00Z", "4", "2", "0", "2", "50.0%"),
        ("whole period", "14", "8", "3", "3", "42.9%"),
    ]


def test_build_cuts_weeks_at_the_period_edges(world: World, clinic: Clinic) -> None:
    period = Period(day(1), day(8, 30))  # a Tuesday to the next Tuesday
    weeks = rows(summary_of(world, period), "Override rates per week")

    assert [(w["from"], w["until"]) for w in weeks[:-1]] == [
        ("2026-11-03T09:00:00Z", "2026-11-09T00:00:00Z"),
        ("2026-11-09T00:00:00Z", "2026-11-10T09:30:00Z"),
    ]


def test_build_for_one_model_version_keeps_its_reports_and_decisions(
    world: World, clinic: Clinic
) -> None:
    report = summary_of(world, two_weeks(), version=2)

    assert [r["model"] for r in rows(report, "Drift reports")] == ["titration:v2"]
    assert rows(report, "Override rates per week")[-1]["decided"] == "4"


def test_build_counts_alerts_by_kind_and_severity(world: World, clinic: Clinic) -> None:
    report = summary_of(world, two_weeks())
    table = {(r["kind"], r["severity"]): r for r in rows(report, "Alerts by kind and severity")}

    crisis = table[("hypertensive_crisis", "critical")]
    assert (crisis["raised"], crisis["acknowledged"], crisis["open now"]) == ("5", "4", "1")
    assert (crisis["escalated"], crisis["escalated by a clinician"]) == ("1", "1")
    low = table[("persistent_low_bp", "high")]
    assert (low["raised"], low["acknowledged"], low["open now"]) == ("2", "1", "1")
    gap = table[("data_gap", "low")]
    assert (gap["raised"], gap["resolved"], gap["acknowledged"]) == ("1", "1", "0")
    assert table[("adherence_drop", "medium")]["raised"] == "0"
    assert table[("model alert (automatic rollback)", "for ML engineers")]["raised"] == "1"
    assert [k for k, _ in table] == [
        "hypertensive_crisis",
        "persistent_low_bp",
        "adherence_drop",
        "data_gap",
        "model alert (automatic rollback)",
    ]
    assert dict(report.summary)["alerts raised"] == "8"


def test_build_times_crisis_acknowledgement_against_the_target(
    world: World, clinic: Clinic
) -> None:
    report = summary_of(world, two_weeks())
    crisis = facts(report, "Time to acknowledge crisis alerts")

    assert ESCALATE_AFTER[Severity.CRITICAL] == timedelta(minutes=15)
    assert crisis["target"] == "acknowledged within 15.0 min of being raised"
    assert "checked every 60 s" in crisis["escalation"]
    assert crisis["crisis alerts raised"] == "5"
    assert crisis["acknowledged"] == "4"
    assert crisis["median"] == "8.5 min"  # of 3, 5, 12, 20
    assert crisis["90th percentile"] == "20.0 min"
    assert crisis["maximum"] == "20.0 min"
    assert crisis["over target"] == "2"  # the 20-minute one, and the one never acknowledged
    assert crisis["not acknowledged, still open"] == "1"
    waited = NOW - clinic.crisis[3].raised_at
    assert crisis["longest wait of those still open"] == (
        f"{waited.total_seconds() / 60:.1f} min ({waited.total_seconds() / 3600:.1f} h)"
    )
    weeks = rows(report, "Time to acknowledge crisis alerts")
    assert [
        (w["raised"], w["acknowledged"], w["median min"], w["p90 min"], w["over target"])
        for w in weeks
    ] == [("3", "3", "12.0", "20.0", "1"), ("2", "1", "3.0", "3.0", "1")]
    assert dict(report.summary)["crisis alerts over target"] == "2"


def test_nearest_rank_picks_the_smallest_value_covering_the_share() -> None:
    assert monitoring.nearest_rank([20.0, 3.0, 12.0, 5.0], 0.9) == 20.0
    assert monitoring.nearest_rank(list(map(float, range(1, 11))), 0.9) == 9.0
    assert monitoring.nearest_rank([7.0], 0.5) == 7.0


def test_build_carries_no_patient_identifier_or_alert_detail(world: World, clinic: Clinic) -> None:
    shown = " ".join(cells(summary_of(world, two_weeks())))

    assert "186/104" not in shown
    for patient in world.patients.values():
        assert patient.id not in shown
        assert patient.pseudonym not in shown


def test_render_as_csv_and_pdf_carries_the_figures(world: World, clinic: Clinic) -> None:
    report = summary_of(world, two_weeks())

    lines = render.to_csv(report).splitlines()
    assert lines[0].startswith("section,report,created,window,status")
    assert any(line.startswith("Override rates per week,") and "42.9%" in line for line in lines)
    assert any(
        line.startswith("Time to acknowledge crisis alerts,") and ",12.0,20.0,20.0,1," in line
        for line in lines
    )
    pdf = pypdf.PdfReader(io.BytesIO(render.to_pdf(report)))
    text = "\n".join(page.extract_text() for page in pdf.pages)
    flat = re.sub(r"\s+", "", text)
    assert "Monitoring summary" in text
    assert "acknowledgedwithin15.0minofbeingraised" in flat
    assert "8.5min" in flat
    assert section(report, "Drift findings").table is not None


def test_service_builds_it_by_kind_with_the_process_settings(
    world: World, clinic: Clinic, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Through the one entry point the API and the pack use: no settings passed, so the
    # builder reads the process's (from the environment, as a server would).
    monkeypatch.setenv("CLINAIOPS_ENVIRONMENT", "test")
    monkeypatch.setenv("CLINAIOPS_DATA_DIR", str(world.settings.data_dir))
    monkeypatch.setenv("CLINAIOPS_ALERT_ESCALATION_SECONDS", "30")
    get_settings.cache_clear()
    try:
        report = service.build(
            world.session,
            kind=ReportKind.MONITORING,
            period=two_weeks(),
            filters=Filters(),
            generated_by="auditor",
            now=NOW,
        )
    finally:
        get_settings.cache_clear()

    crisis = facts(report, "Time to acknowledge crisis alerts")
    assert "checked every 30 s" in crisis["escalation"]
    assert crisis["median"] == "8.5 min"
