"""The model card against the registry: the version chosen, its training data, metrics
overall and per subgroup, every gate with its evidence, the privacy guarantee and ledger,
lineage and sign-offs, serving history and known limits; aggregates only."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import pypdf
import pytest

from mlops import lifecycle
from mlops.models import SignoffRole
from reports import model_card, render
from reports.models import Filters, Report, ReportKind
from tests.conftest import World
from tests.reports.lifecycle_setup import (
    History,
    arrange,
    at,
    cells,
    facts,
    period,
    rows,
    section,
    spend,
)

NOW = at(30)


@pytest.fixture
def history(world: World, tmp_path: Path) -> History:
    return arrange(world, tmp_path)


def card(world: World, start: float = 0, end: float = 7, version: int | None = None) -> Report:
    return model_card.build(
        world.session,
        period=period(start, end),
        filters=Filters(model_version=version),
        generated_by="auditor",
        now=NOW,
        settings=world.settings,
    )


def test_build_without_version_describes_the_version_serving_at_the_period_end(
    world: World, history: History
) -> None:
    after = card(world, 0, 7)
    before = card(world, 0, 5)  # v2 went to production on day 6

    assert after.kind is ReportKind.MODEL_CARD
    assert after.title == "Model card: titration:v2"
    assert dict(after.summary)["serving production at the end of the period"] == "yes"
    assert before.title == "Model card: titration:v1"
    assert dict(before.summary)["chosen as"] == (
        "the version serving production at the end of the period"
    )
    assert all(isinstance(c, str) for c in cells(after))


def test_build_of_a_version_asked_for_even_when_not_serving(world: World, history: History) -> None:
    report = card(world, 0, 5, version=2)

    assert report.title == "Model card: titration:v2"
    summary = dict(report.summary)
    assert summary["chosen as"] == "the model version asked for"
    assert summary["serving production at the end of the period"] == "no"
    assert summary["status now"] == "production"


def test_build_of_an_unknown_version_raises_not_found(world: World, history: History) -> None:
    with pytest.raises(lifecycle.ModelNotFound):
        card(world, version=9)


def test_build_when_nothing_served_says_so(world: World) -> None:
    report = card(world)

    assert report.title == "Model card: no version in production"
    assert dict(report.summary)["serving production at the end of the period"] == "none"


def test_build_shows_the_training_snapshot_and_its_label_balance(
    world: World, history: History
) -> None:
    report = card(world, version=2)
    data = facts(report, "Training data")
    snap = history.snapshot

    assert data["training snapshot"] == f"id {snap.id}, content hash {snap.content_hash}"
    assert data["data hash"] == history.v2.data_hash == snap.content_hash
    assert (data["rows"], data["patients"], data["holdout patients"]) == ("160", "160", "40")
    assert data["cohort"] == "clinic"
    assert data["labels"] == "clinician decisions"
    assert data["data checks"] == "2 of 2 passed; snapshot valid"
    balance = {r["label"]: (r["rows"], r["share"]) for r in rows(report, "Label balance")}
    assert balance == {
        "decrease": ("24", "15.0%"),
        "hold": ("98", "61.2%"),
        "increase": ("38", "23.8%"),
    }


def test_build_of_v1_describes_its_simulated_training_data(world: World, history: History) -> None:
    report = card(world, version=1)
    data = facts(report, "Training data")

    assert data["training snapshot"].startswith("none: simulated cohort")
    assert data["rows"] == str(239 + 575 + 144)
    assert data["patients"] == "120"
    assert data["simulation seed"] == "7"
    assert section(report, "Label balance").table is None
    assert "no validation run" in section(report, "Validation evidence").notes[0]


def test_build_shows_metrics_overall_and_per_subgroup_from_the_registry(
    world: World, history: History
) -> None:
    report = card(world, version=2)
    dp = history.v2.metrics["dp"]

    perf = facts(report, "Performance on the holdout")
    assert perf["accuracy"] == f"{dp['accuracy']:.4g}"
    assert perf["expected calibration error"] == f"{dp['ece']:.4g}"
    assert perf["cost of privacy (baseline minus DP)"] == "accuracy=0.025; macro_f1=0.0588"
    overall = {r["model"]: r for r in rows(report, "Metrics overall")}
    assert overall["this model (DP-SGD)"]["accuracy"] == "0.725"
    assert overall["non-private baseline, same rows (not released)"]["macro-F1"] == "0.7"
    groups = {(r["subgroup"], r["source"]): r for r in rows(report, "Metrics per subgroup")}
    female = groups[("sex:female", "training holdout")]
    assert (female["rows"], female["accuracy"]) == ("22", "0.7273")
    assert female["gap to overall"] == f"{0.725 - 0.7273:.4g}"
    assert groups[("age_band:<50", "training holdout")]["assessed"] == "no (too few rows)"
    # The newest gate run's subgroup figures sit beside them.
    gate = next(r for r in history.run if r.gate == "subgroup_gap")
    source = f"gate run {gate.run_id[:8]}"
    for name, found in gate.measured["subgroups"].items():
        assert groups[(name, source)]["rows"] == str(found["rows"])


def test_build_shows_each_gate_measured_against_its_threshold_with_evidence(
    world: World, history: History
) -> None:
    report = card(world, version=2)
    gates = {r["gate"]: r for r in rows(report, "Validation gates")}
    stored = {r.gate: r for r in history.run}

    assert set(gates) == set(lifecycle.REQUIRED_GATES)
    for name, result in stored.items():
        assert gates[name]["result"] == ("pass" if result.passed else "fail")
        assert gates[name]["evidence sha256"] == result.evidence_sha256
        assert gates[name]["evidence file"] == "matches"
        assert gates[name]["detail"] == result.detail
    noninf = stored["holdout_noninferiority"]
    upper = noninf.measured["nll_difference_upper_95"]
    assert f"nll_difference_upper_95={upper:.6g}" in gates["holdout_noninferiority"]["measured"]
    assert "nll_difference_upper_95_at_most=0.15" in gates["holdout_noninferiority"]["threshold"]
    assert "ece_at_most=0.08" in gates["calibration"]["threshold"]
    validation = facts(report, "Validation evidence")
    assert validation["newest run"] == history.run[0].run_id
    assert validation["verdict"] == "passed every required gate"
    assert validation["compared with"] == "v1"
    assert validation["evidence files"] == "8 of 8 match their recorded SHA-256"


def test_build_when_an_evidence_file_changed_says_so(world: World, history: History) -> None:
    changed = next(r for r in history.run if r.gate == "calibration")
    path = world.settings.data_dir / (changed.evidence_path or "")
    path.write_bytes(path.read_bytes() + b" ")
    (world.settings.data_dir / (history.run[0].evidence_path or "")).unlink()

    report = card(world, version=2)
    states = {r["gate"]: r["evidence file"] for r in rows(report, "Validation gates")}

    assert states["calibration"] == "changed"
    assert states[history.run[0].gate] == "missing"
    assert facts(report, "Validation evidence")["evidence files"] == (
        "6 of 8 match their recorded SHA-256"
    )


def test_build_shows_the_privacy_guarantee_and_the_cohort_ledger(
    world: World, history: History
) -> None:
    spend(world, version=None, snapshot_id=None, epsilon=1.5, delta=1e-4, when=at(6.5))
    spend(world, version=None, snapshot_id=None, epsilon=2.0, delta=1e-4, when=at(8))  # later

    report = card(world, 0, 7, version=2)
    privacy = facts(report, "Privacy guarantee")
    record = history.v2.privacy

    assert privacy["epsilon"] == f"{record['epsilon']:.6g}"
    assert privacy["delta"] == f"{record['delta']:.6g}"
    assert privacy["accountant"] == "rdp"
    assert privacy["clipping (max gradient norm)"] == "1"
    assert privacy["noise multiplier"] == "0.9124"
    assert privacy["unit of privacy"] == "patient"
    assert privacy["secure_mode"] == "off"
    assert privacy["cohort"] == "clinic"
    assert privacy["ledger entry"].startswith(f"#{history.spend.id}: epsilon 2.9533")
    assert privacy["cohort at training"] == "budget 10, spent 0 before and 2.9533 after this run"
    # By the end of the period: this run and the one on day 6.5, not the one on day 8.
    spent = 2.9533 + 1.5
    assert privacy["cohort at the end of the period"] == (
        f"2 runs; epsilon {spent:.6g} of 10 spent, {10 - spent:.6g} remaining; "
        f"delta {0.00104167 + 1e-4:.6g}"
    )
    meaning = section(report, "Privacy guarantee").notes[0]
    assert meaning.startswith(
        "Guarantee: (2.9533, 0.00104167)-differential privacy for one patient"
    )
    assert f"{math.exp(2.9533):.3g} times more likely" in meaning


def test_build_shows_lineage_signoffs_and_serving_history(world: World, history: History) -> None:
    report = card(world, version=2)
    lineage = facts(report, "Lineage")
    v2 = history.v2

    assert lineage["parent"] == "v1"
    assert lineage["ancestors"] == "v1 (retired)"
    assert lineage["code version"] == v2.code_version
    assert lineage["artifact sha256"] == v2.artifact_sha256
    assert lineage["artifact file now"] == "matches its SHA-256 and feature set"
    mleng = world.users["mleng"]
    assert lineage["created by"] == "Mleng (mleng, ml_engineer)"
    signed = {r["role"]: r for r in rows(report, "Sign-offs")}
    assert signed["ml_engineer"]["signer (printed name)"] == mleng.full_name
    assert signed["ml_engineer"]["signed at (UTC)"] == "2026-11-05T09:00:00Z"
    assert signed["clinical_lead"]["signer (printed name)"] == "Dr Clinical Lead"
    assert signed["clinical_lead"]["signed at (UTC)"] == "2026-11-05T10:00:00Z"
    assert (
        signed["clinical_lead"]["meaning"] == lifecycle.SIGNOFF_MEANINGS[SignoffRole.CLINICAL_LEAD]
    )
    assert {r["signature"] for r in signed.values()} == {"valid"}
    assert "Still missing: nothing." in section(report, "Sign-offs").notes
    (served,) = rows(report, "Serving history")
    assert (served["from"], served["until"]) == ("2026-11-08T09:00:00Z", "still serving")
    changes = [r["change"] for r in rows(report, "Lifecycle transitions")]
    assert changes == [
        "none -> candidate",
        "candidate -> validated",
        "validated -> shadow",
        "shadow -> canary",
        "canary -> production",
    ]
    v1 = card(world, version=1)
    (interval,) = rows(v1, "Serving history")
    assert interval["until"] == "2026-11-08T09:00:00Z"
    assert interval["why ended"] == "replaced by titration:v2 (rollout 1)"


def test_build_states_the_known_limits(world: World, history: History) -> None:
    report = card(world, version=2)
    limits = section(report, "Known limits")
    text = " ".join(limits.notes)

    assert dict(limits.facts)["secure_mode"] == "off"
    assert dict(limits.facts)["cuffless inputs"] == (
        "cuffless_sbp_mean_7d, cuffless_sbp_slope_14d, cuffless_sbp_mean_7d_missing, "
        "cuffless_sbp_slope_14d_missing"
    )
    assert "secure_mode is off" in text
    assert "torchcsprng" in text
    assert "cryptographically secure generator" in text  # the retraining's secret seed
    assert "Cuffless (wearable) blood pressure is not used for titration" in text
    assert "the directional safety gate does not vary them" in text
    gate = next(r for r in history.run if r.gate == "holdout_noninferiority")
    assert (
        f"The holdout is small ({gate.measured['rows']} rows of {gate.measured['patients']} "
        "patients)" in text
    )
    assert "at most 0.15 nats" in text
    assert "Sex is reported, not gated" in text
    assert "0.0412" in text
    v1 = " ".join(section(card(world, version=1), "Known limits").notes)
    assert "fixed and recorded (seed 7)" in v1
    assert "training row, not a patient" in v1


def test_build_carries_no_patient_identifier(world: World, history: History) -> None:
    shown = " ".join(cells(card(world, version=2)))

    for patient in world.patients.values():
        assert patient.id not in shown
        assert patient.pseudonym not in shown


def test_render_as_csv_and_pdf_carries_the_card_figures(world: World, history: History) -> None:
    report = card(world, version=2)

    lines = render.to_csv(report).splitlines()
    assert lines[0] == "section,item,value"
    assert "Summary,model,titration:v2" in lines
    assert "Training data,rows,160" in lines
    assert "Privacy guarantee,epsilon,2.9533" in lines
    assert "Known limits,secure_mode,off" in lines
    pdf = pypdf.PdfReader(io.BytesIO(render.to_pdf(report)))
    text = "\n".join(page.extract_text() for page in pdf.pages)
    flat = re.sub(r"\s+", "", text)
    assert "Model card: titration:v2" in text
    assert "Dr Clinical Lead" in text
    for result in history.run:  # every gate's evidence hash (long cells wrap)
        assert result.evidence_sha256 in flat
    assert f"page {len(pdf.pages)} of {len(pdf.pages)}" in text
