"""The change-control log against the lifecycle tables, on real rollouts: candidate v2's
shadow is rolled back automatically when clinicians overrule it; v3 fails a gate, passes on a
second run, is signed off, rolls out through every canary step to production, and is rolled
back by hand, restoring v1."""

from __future__ import annotations

import io
import re
from datetime import timedelta
from pathlib import Path

import pypdf
import pytest
from sqlalchemy import select
from sqlmodel import col

from loops.models import Proposal
from loops.review import service as review
from mlops import rollout, serving
from mlops.models import ModelStatus, ModelTransition, Rollout, RolloutStatus, RolloutStep
from reports import change_control, render
from reports.models import Filters, Period, Report, ReportKind
from tests.conftest import PASSWORD, World
from tests.mlops.rollout_setup import DWELL, Rig
from tests.reports.lifecycle_setup import (
    cells,
    facts,
    gate_run,
    register,
    rows,
    section,
    sign,
    v2_fields,
)
from tests.reports.lifecycle_setup import snapshot as store_snapshot


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving, "_cache", {})  # each test loads its own artifacts


class Story:
    """The two rollouts, on the rollout tests' rig (a cohort of 30, v1 in production)."""

    def __init__(self, world: World, tmp_path: Path) -> None:
        self.world = world
        self.rig = rig = Rig(world, tmp_path, challenger_push=-2.0)  # v2 contradicts v1
        s = rig.s
        # v2: shadow, clinicians approve the champion's increases, v2 proposed decreases.
        rig.start()
        rig.evaluate(1)
        for proposal in list(s.scalars(select(Proposal)))[:5]:
            review.decide(
                s,
                proposal_id=proposal.id,
                user=world.users["clina"],
                kind="approve",
                password=PASSWORD,
                meaning_confirmed=True,
                now=rig.at(2),
                settings=world.settings,
            )
        s.commit()
        (self.breach,) = rig.tick(3)
        assert self.breach.decision == "rollback"
        # v3: a failed run, a passing one, two sign-offs, a clean rollout to production.
        snap = store_snapshot(world, rig.at(4))
        self.v3 = register(
            world,
            tmp_path / "models",
            status=ModelStatus.CANDIDATE,
            fields=v2_fields(snap),
            created_at=rig.at(4),
            created_by=f"user:{world.users['mleng'].id}",
            data_hash=snap.content_hash,
            parent=1,
        )
        self.failed = gate_run(world, self.v3, rig.at(5), fail_calibration=True)
        self.passed = gate_run(world, self.v3, rig.at(6))
        sign(world, self.v3, rig.at(7))
        started = rollout.start(
            session=s, name="titration", version=3, actor="cli:ops", now=rig.at(70), dwell=DWELL
        )
        started.salt = rig.salt
        s.commit()
        minute = 71.0
        for _ in range(5):
            rig.evaluate(minute)
            rig.tick(minute + 10)
            minute += 11
        assert rig.rollout().status == RolloutStatus.COMPLETED
        rollout.rollback(
            session=s,
            name="titration",
            actor=f"user:{world.users['mleng'].id}",
            reason="incident 7",
            now=rig.at(140),
        )
        s.commit()
        self.period = Period(rig.t0 - timedelta(hours=1), rig.at(200))

    def log(self, version: int | None = None, period: Period | None = None) -> Report:
        return change_control.build(
            self.rig.s,
            period=period or self.period,
            filters=Filters(model_version=version),
            generated_by="auditor",
            now=self.rig.at(300),
            settings=self.world.settings,
        )


@pytest.fixture
def story(world: World, tmp_path: Path) -> Story:
    return Story(world, tmp_path)


def test_build_lists_every_transition_with_who_and_why(story: Story) -> None:
    report = story.log()
    stored = list(
        story.rig.s.scalars(
            select(ModelTransition).order_by(col(ModelTransition.at), col(ModelTransition.id))
        )
    )

    assert report.kind is ReportKind.CHANGE_CONTROL
    listed = rows(report, "Transitions")
    assert [(r["version"], r["from"], r["to"], r["why"]) for r in listed] == [
        (f"v{t.version}", t.from_status or "none", t.to_status, t.reason) for t in stored
    ]
    manual = next(r for r in listed if r["why"].startswith("manual rollback to v1"))
    assert manual["by"] == "Mleng (mleng, ml_engineer)"
    assert manual["why"] == "manual rollback to v1: incident 7"
    started = next(r for r in listed if r["to"] == "shadow" and r["version"] == "v3")
    assert started["reference"].startswith("rollout_id ")
    assert all(isinstance(c, str) for c in cells(report))


def test_build_shows_each_gate_run_with_its_evidence(story: Story) -> None:
    runs = rows(story.log(), "Validation runs")

    by_run: dict[str, list[dict[str, str]]] = {}
    for r in runs:
        by_run.setdefault(r["run"], []).append(r)
    assert len(by_run) == 3  # v2's (make_ready), v3's failed and passed runs
    failed = by_run[story.failed[0].run_id[:8]]
    assert {r["run verdict"] for r in failed} == {"run failed"}
    calibration = next(r for r in failed if r["gate"] == "calibration")
    stored = next(g for g in story.failed if g.gate == "calibration")
    assert calibration["result"] == "fail"
    assert calibration["measured"].startswith(f"ece={stored.measured['ece']:.6g}")
    assert calibration["threshold"] == "ece_at_most=0.08"
    assert calibration["evidence sha256"] == stored.evidence_sha256
    assert calibration["evidence file"] == "matches"
    assert calibration["compared with"] == "v1"
    passed = by_run[story.passed[0].run_id[:8]]
    assert {(r["run verdict"], r["result"]) for r in passed} == {("run passed", "pass")}
    v2 = [r for r in runs if r["version"] == "v2"]
    assert len(v2) == 8
    assert {r["evidence file"] for r in v2} == {"no file"}


def test_build_shows_the_approvers(story: Story) -> None:
    approvals = rows(story.log(), "Approvals")

    assert [(r["version"], r["role"]) for r in approvals] == [
        ("v2", "ml_engineer"),
        ("v2", "clinical_lead"),
        ("v3", "ml_engineer"),
        ("v3", "clinical_lead"),
    ]
    assert {r["signature"] for r in approvals} == {"valid"}
    lead = approvals[-1]
    assert lead["signer (printed name)"] == story.world.users["lead"].full_name
    assert lead["signed at"] == (story.rig.at(7) + timedelta(hours=1)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


def test_build_shows_rollout_steps_with_verdicts_and_reasons(story: Story) -> None:
    report = story.log()
    steps = rows(report, "Rollout steps")
    stored = list(story.rig.s.scalars(select(RolloutStep).order_by(col(RolloutStep.id))))

    assert [(r["rollout"], r["stage"], r["share"], r["verdict"]) for r in steps] == [
        (f"#{s.rollout_id}", s.stage, f"{s.percent}%", s.decision) for s in stored
    ]
    assert [r["verdict"] for r in steps] == [
        "rollback",
        "advance",
        "advance",
        "advance",
        "advance",
        "complete",
    ]
    breach = steps[0]
    assert breach["reasons"] == "; ".join(story.breach.reasons)
    assert breach["reasons"].startswith("override_rate 1.0 vs champion 0.0")
    assert "override_rate" in breach["checks"]
    assert "BREACH" in breach["checks"]
    assert "decided 5" in breach["challenger arm"]
    rollouts = rows(report, "Rollouts")
    assert [(r["challenger"], r["status"]) for r in rollouts] == [
        ("v2", "rolled_back"),
        ("v3", "completed"),
    ]


def test_build_shows_automatic_and_manual_rollbacks_with_the_alert(story: Story) -> None:
    report = story.log()
    automatic, manual = rows(report, "Rollbacks")
    first = story.rig.s.get(Rollout, 1)
    assert first is not None

    assert (automatic["version retired"], automatic["kind"]) == ("v2", "automatic")
    assert automatic["rollout"] == "#1"
    assert automatic["by"] == "system:rollout"
    assert automatic["serving after"] == "v1"
    assert automatic["alert"] == first.end_reason
    assert automatic["alert"].startswith("automatic rollback at shadow 0%: override_rate")
    assert (manual["version retired"], manual["kind"]) == ("v3", "manual")
    assert manual["rollout"] == "none (after completion)"
    assert manual["reason"] == "manual rollback to v1: incident 7"
    assert manual["serving after"] == "v1"
    assert manual["alert"] == "n/a"
    summary = dict(report.summary)
    assert summary["rollbacks"] == "2 (1 automatic, 1 manual)"
    assert summary["rollouts"] == "2 (1 completed, 1 rolled_back)"
    assert summary["validation runs"] == "3 (2 passed)"
    assert summary["in production at the end of the period"] == "v1"


def test_build_for_one_version_keeps_only_its_changes(story: Story) -> None:
    report = story.log(version=2)

    assert {r["version"] for r in rows(report, "Transitions")} == {"v2"}
    assert {r["version"] for r in rows(report, "Validation runs")} == {"v2"}
    assert [r["challenger"] for r in rows(report, "Rollouts")] == ["v2"]
    assert [r["version retired"] for r in rows(report, "Rollbacks")] == ["v2"]
    assert dict(report.summary)["versions changed"] == "v2"


def test_build_outside_the_changes_finds_none(story: Story) -> None:
    before = Period(story.rig.t0 - timedelta(days=2), story.rig.t0 - timedelta(days=1))
    report = story.log(period=before)

    assert dict(report.summary)["versions changed"] == "none"
    assert all(section(report, h).table is None for h in ("Transitions", "Rollbacks"))
    assert "No rollback in the period." in section(report, "Rollbacks").notes


def test_render_as_csv_and_pdf_carries_the_changes(story: Story) -> None:
    report = story.log()

    lines = render.to_csv(report).splitlines()
    assert lines[0].startswith("section,at,version,from,to,by,why")
    assert any(
        line.startswith("Rollbacks,") and ",automatic," in line and ",#1," in line for line in lines
    )
    assert any(line.startswith("Approvals,") and "Clinical Lead" in line for line in lines)
    assert not any(line.startswith("Rollouts,") for line in lines)  # not a primary table
    pdf = pypdf.PdfReader(io.BytesIO(render.to_pdf(report)))
    text = "\n".join(page.extract_text() for page in pdf.pages)
    flat = re.sub(r"\s+", "", text)
    assert "Change-control log: titration, every version" in text
    assert "manualrollbacktov1:incident7" in flat
    assert story.passed[0].evidence_sha256 in flat
    assert facts(report, "Transitions") == {}
