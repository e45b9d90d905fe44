"""Rollout end to end on the database: shadow logged and never delivered, the canary slice
served, steps advanced with a tiny dwell and a fixed clock, automatic rollback on a breach
within the evaluation cycle, manual rollback, and serving failing safe (tampered artifact,
a model that raises)."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core import clock
from audit.models import AuditEntry
from loops.flows import Outcome, evaluate_many
from loops.models import MedicationRegimen, Proposal, ProposalStatus
from loops.review import service as review
from mlops import canary, lifecycle, registry, rollout, serving
from mlops.models import (
    ModelAlias,
    ModelStatus,
    RolloutStatus,
    RolloutStep,
    ShadowPrediction,
)
from mlops.serving import ServedModel
from tests.conftest import PASSWORD, World
from tests.mlops.rollout_setup import SMALL, N, Rig, register, titration_model


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each test loads its own artifacts: nothing from another test's process cache.
    monkeypatch.setattr(serving, "_cache", {})


@pytest.fixture
def rig(world: World, tmp_path: Path) -> Rig:
    """A challenger that proposes what the champion does."""
    return Rig(world, tmp_path, challenger_push=2.0)


@pytest.fixture
def contrary(world: World, tmp_path: Path) -> Rig:
    """A challenger that proposes a decrease where the champion proposes an increase."""
    return Rig(world, tmp_path, challenger_push=-2.0)


def _audit_actions(s: Session, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    rows = s.scalars(
        select(AuditEntry).where(AuditEntry.action.startswith(prefix)).order_by(AuditEntry.seq)  # type: ignore[attr-defined]
    )
    return [(r.action, json.loads(r.details)) for r in rows]


class _Raises(ServedModel):
    """A loaded model whose inference raises."""

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        raise RuntimeError("inference crashed")


class _ExplainFails(ServedModel):
    """Scores, then fails to explain."""

    def explain_many(self, *args: Any, **kwargs: Any) -> list[Any]:
        raise RuntimeError("explainer down")


# ------------------------------------------------------------------ start


def test_start_when_not_signed_off_is_refused_with_what_is_missing(
    world: World, tmp_path: Path
) -> None:
    t0 = clock.utcnow()
    register(world, titration_model(), tmp_path, ModelStatus.PRODUCTION, t0)
    register(world, titration_model(), tmp_path, ModelStatus.CANDIDATE, t0)
    with pytest.raises(rollout.RolloutRefused) as refused:
        rollout.start(session=world.session, name="titration", version=2, actor="x", now=t0)
    assert refused.value.code == "not_ready"
    assert "status_not_validated" in refused.value.detail
    assert "signoff_clinical_lead" in refused.value.detail


def test_start_moves_the_challenger_to_shadow_with_its_alias_audited(rig: Rig) -> None:
    started = rig.start()
    assert (started.status, started.percent, started.champion_version) == ("shadow", 0, 1)
    assert started.dwell_seconds == 600
    assert rig.status(2) == ModelStatus.SHADOW
    assert rig.alias("challenger") == 2
    assert rig.alias("champion") == 1
    actions = [a for a, _ in _audit_actions(rig.s, "model.")]
    assert "model.rollout.start" in actions
    with pytest.raises(rollout.RolloutRefused) as refused:
        rollout.start(session=rig.s, name="titration", version=2, actor="x", now=rig.at(1))
    assert refused.value.code == "not_ready"  # no longer validated: it is in shadow


def test_start_with_unusable_artifact_is_refused(rig: Rig) -> None:
    Path(rig.v2.artifact_path).write_text("{}")
    with pytest.raises(rollout.RolloutRefused) as refused:
        rig.start()
    assert refused.value.code == "artifact_unusable"
    assert rig.status(2) == ModelStatus.VALIDATED


# ------------------------------------------------------------------ shadow


def test_shadow_scores_every_evaluation_logged_and_never_delivered(contrary: Rig) -> None:
    rig = contrary
    started = rig.start()
    steps_before = {r.patient_id: r.current_step for r in rig.s.scalars(select(MedicationRegimen))}
    rig.evaluate(1)

    shadows = list(rig.s.scalars(select(ShadowPrediction)))
    evaluations = {e.id: e for e in rig.evaluations(1)}
    assert len(shadows) == len(evaluations) == N
    for shadow in shadows:
        evaluation = evaluations[shadow.evaluation_id]
        assert evaluation.patient_id == shadow.patient_id
        assert evaluation.model_version == "titration:v1"  # the champion served
        assert (shadow.rollout_id, shadow.challenger_version) == (started.id, 2)
        assert shadow.champion_action == "increase"
        assert shadow.challenger_action == "decrease"
        assert shadow.challenger_route == "clinician_review"
        assert len(shadow.probabilities) == 3
        assert shadow.error is None
        assert shadow.latency_ms is not None
        assert shadow.latency_ms >= 0
    proposals = list(rig.s.scalars(select(Proposal)))
    assert {p.model_version for p in proposals} == {"titration:v1"}
    assert {p.action for p in proposals} == {"increase"}
    steps_after = {r.patient_id: r.current_step for r in rig.s.scalars(select(MedicationRegimen))}
    assert steps_after == steps_before  # everything queued: nothing delivered, least of all v2

    found = rollout.analyse(rig.s, rollout=rig.rollout(), now=rig.at(2), thresholds=SMALL)
    doc = found.document()
    assert doc["agreement"]["with_champion"] == 0.0
    assert doc["agreement"]["compared"] == N
    assert doc["challenger"]["proposals"] == N
    assert doc["champion"]["proposals"] == N


def test_shadow_challenger_the_clinicians_disagree_with_is_rolled_back(contrary: Rig) -> None:
    rig = contrary
    rig.start()
    rig.evaluate(1)
    clinician = rig.world.users["clina"]
    for proposal in list(rig.s.scalars(select(Proposal)))[:5]:
        review.decide(
            rig.s,
            proposal_id=proposal.id,
            user=clinician,
            kind="approve",
            password=PASSWORD,
            meaning_confirmed=True,
            now=rig.at(2),
            settings=rig.world.settings,
        )
    rig.s.commit()

    found = rollout.analyse(rig.s, rollout=rig.rollout(), now=rig.at(3), thresholds=SMALL)
    agreement = found.document()["agreement"]
    assert agreement["with_clinicians_champion"] == 1.0
    assert agreement["with_clinicians_challenger"] == 0.0
    (step,) = rig.tick(3)  # before the dwell is over: a breach does not wait
    assert step.decision == "rollback"
    assert step.reasons[0].startswith("override_rate 1.0 vs champion 0.0")
    assert rig.rollout().status == RolloutStatus.ROLLED_BACK
    assert rig.status(2) == ModelStatus.RETIRED


# ------------------------------------------------------------------ canary


def test_canary_serves_the_slice_the_challenger_and_the_others_the_champion(rig: Rig) -> None:
    rig.to_canary()
    rig.evaluate(12)

    in_slice = {pid for pid in rig.ids if canary.in_slice(rig.salt, pid, 10)}
    assert 0 < len(in_slice) < N
    served = {e.patient_id: e.model_version for e in rig.evaluations(12)}
    assert served == {
        pid: ("titration:v2" if pid in in_slice else "titration:v1") for pid in rig.ids
    }
    for pid in rig.ids:
        model = serving.for_patient(rig.s, pid)
        assert model is not None
        assert model.label == ("titration:v2" if pid in in_slice else "titration:v1")
    assert all(e.model_ms is not None for e in rig.evaluations(12))
    # No shadow scoring once the canary runs.
    assert (
        rig.s.query(ShadowPrediction).filter(ShadowPrediction.created_at == rig.at(12)).count() == 0
    )


def test_tick_advances_through_every_step_then_completes(rig: Rig) -> None:
    rig.start()
    served_by_v2: list[set[str]] = []
    minute = 1.0
    for expected in (10, 25, 50, 100):
        rig.evaluate(minute)
        (step,) = rig.tick(minute + 10)
        assert (step.decision, step.analysis["next_percent"]) == ("advance", expected)
        minute += 11
        rig.evaluate(minute)
        served_by_v2.append(
            {e.patient_id for e in rig.evaluations(minute) if e.model_version == "titration:v2"}
        )
        minute += 1
    (step,) = rig.tick(minute + 10)
    assert step.decision == "complete"

    # Monotone slices: whoever the challenger served at one step it serves at the next.
    for smaller, larger in itertools.pairwise(served_by_v2):
        assert smaller <= larger
    assert served_by_v2[-1] == set(rig.ids)
    stored = rollout.steps(rig.s, rollout_id=rig.rollout().id or 0)
    assert [(s.stage, s.percent, s.decision) for s in stored] == [
        ("shadow", 0, "advance"),
        ("canary", 10, "advance"),
        ("canary", 25, "advance"),
        ("canary", 50, "advance"),
        ("canary", 100, "complete"),
    ]
    # The 10% step saw its slice evaluated twice (minutes 12 and 13).
    assert stored[1].analysis["challenger"]["scored"] == 2 * len(served_by_v2[0])
    finished = rig.rollout()
    assert finished.status == RolloutStatus.COMPLETED
    assert finished.ended_at is not None
    assert (rig.status(2), rig.status(1)) == (ModelStatus.PRODUCTION, ModelStatus.RETIRED)
    assert (rig.alias("champion"), rig.alias("challenger")) == (2, None)
    served = serving.production(rig.s)
    assert served is not None
    assert served.label == "titration:v2"
    assert not isinstance(served, serving.Serving)
    actions = [a for a, _ in _audit_actions(rig.s, "model.rollout")]
    assert actions == ["model.rollout.start"] + ["model.rollout.advance"] * 4 + [
        "model.rollout.complete"
    ]
    history = lifecycle.serving_history(rig.s, name="titration")
    assert [(i.version, i.end is None) for i in history] == [(1, False), (2, True)]


def test_tick_before_the_dwell_holds_and_stores_nothing(rig: Rig) -> None:
    rig.start()
    rig.evaluate(1)
    (step,) = rig.tick(5)
    assert step.decision == "hold"
    assert step.reasons == ["dwell: 300 s left of 600 s"]
    assert step.id is None
    assert rig.s.query(RolloutStep).count() == 0
    assert rig.rollout().status == RolloutStatus.SHADOW


def test_tick_after_the_dwell_without_evaluations_holds(rig: Rig) -> None:
    rig.start()
    (step,) = rig.tick(30)
    assert step.decision == "hold"
    assert step.reasons == ["insufficient_data: 0 of 1 evaluations"]


def test_canary_when_challenger_raises_routes_to_clinicians_and_rolls_back_in_the_cycle(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.to_canary()
    loaded = serving.load(rig.v2)
    assert loaded is not None
    serving._cache[(loaded.label, rig.v2.artifact_sha256)] = _Raises(loaded.label, loaded.model)

    rig.evaluate(12)  # the service keeps running

    in_slice = {pid for pid in rig.ids if canary.in_slice(rig.salt, pid, 10)}
    for evaluation in rig.evaluations(12):
        if evaluation.patient_id in in_slice:
            assert evaluation.model_version == "titration:v2"
            assert evaluation.outcome == Outcome.MODEL_UNAVAILABLE
            assert evaluation.proposal_id is None
            assert evaluation.route is None
        else:
            assert evaluation.model_version == "titration:v1"
            assert evaluation.outcome == Outcome.PROPOSAL
    assert "model titration:v2 failed on" in caplog.text

    with caplog.at_level(logging.ERROR, logger="clinaiops.rollout"):
        (step,) = rig.tick(13)  # the next cycle, long before the dwell is over
    assert step.decision == "rollback"
    assert step.reasons[0].startswith("error_rate 1.0 vs champion 0.0")
    assert "MODEL ALERT: rollout" in caplog.text
    ended = rig.rollout()
    assert ended.status == RolloutStatus.ROLLED_BACK
    assert ended.end_reason.startswith("automatic rollback at canary 10%: error_rate")
    assert (rig.status(2), rig.status(1)) == (ModelStatus.RETIRED, ModelStatus.PRODUCTION)
    assert (rig.alias("champion"), rig.alias("challenger")) == (1, None)
    ((_, details),) = [d for d in _audit_actions(rig.s, "model.rollout.rollback")]
    assert details["automatic"] is True
    assert details["model_alert"] is True
    assert details["breaches"] == ["error_rate"]
    # The champion serves everyone again.
    rig.evaluate(14)
    assert {e.model_version for e in rig.evaluations(14)} == {"titration:v1"}


def test_canary_with_tampered_artifact_routes_its_slice_to_clinicians_and_rolls_back(
    rig: Rig,
) -> None:
    rig.to_canary()
    path = Path(rig.v2.artifact_path)
    path.write_bytes(path.read_bytes().replace(b'"metadata"', b'"metadata" ', 1))
    serving._cache.clear()  # a process starting now, or the first load of the challenger

    rig.evaluate(12)

    in_slice = {pid for pid in rig.ids if canary.in_slice(rig.salt, pid, 10)}
    outcomes = {e.patient_id: (e.model_version, e.outcome) for e in rig.evaluations(12)}
    for pid in in_slice:
        assert outcomes[pid] == ("titration:v2", Outcome.MODEL_UNAVAILABLE)
    assert all(outcomes[p][1] == Outcome.PROPOSAL for p in set(rig.ids) - in_slice)
    (step,) = rig.tick(13)
    assert step.decision == "rollback"
    assert step.reasons[0] == "artifact_unusable: unusable: ArtifactIntegrityError"


def test_tick_with_artifact_changed_after_loading_rolls_back(rig: Rig) -> None:
    rig.to_canary()
    rig.evaluate(12)  # loaded and cached while intact
    Path(rig.v2.artifact_path).write_text("{}")
    (step,) = rig.tick(13)
    assert step.decision == "rollback"
    assert step.reasons[0].startswith("artifact_unusable")


def test_canary_challenger_clinicians_override_more_is_rolled_back(rig: Rig) -> None:
    rig.to_canary()
    rig.evaluate(12)
    clinician = rig.world.users["clina"]
    for proposal in rig.s.scalars(
        select(Proposal).where(Proposal.status == ProposalStatus.PENDING_REVIEW)
    ).all():
        review.decide(
            rig.s,
            proposal_id=proposal.id,
            user=clinician,
            kind="reject" if proposal.model_version == "titration:v2" else "approve",
            password=PASSWORD,
            meaning_confirmed=True,
            now=rig.at(13),
            reason_code="clinical_judgement",
            settings=rig.world.settings,
        )
    rig.s.commit()
    (step,) = rig.tick(14)
    assert step.decision == "rollback"
    assert step.reasons == ["override_rate 1.0 vs champion 0.0 (limit champion + 0.1)"]
    assert step.analysis["champion"]["decided"] > 0


def test_tick_when_the_champion_changed_during_the_rollout_rolls_back(
    rig: Rig, tmp_path: Path
) -> None:
    rig.to_canary()
    # A version registered straight into production (train-initial) replaces the champion.
    register(
        rig.world, titration_model(1.0), tmp_path / "other", ModelStatus.PRODUCTION, rig.at(12)
    )
    (step,) = rig.tick(13)
    assert step.decision == "rollback"
    assert step.reasons[0] == "champion_changed: v1 -> v3"
    assert rig.status(2) == ModelStatus.RETIRED
    assert rig.alias("champion") == 3


# ------------------------------------------------------------------ fail-safe serving


def test_tampered_production_artifact_routes_everyone_to_clinicians(rig: Rig) -> None:
    path = Path(rig.v1.artifact_path)
    path.write_bytes(path.read_bytes() + b" ")
    assert serving.production(rig.s) is None
    rig.evaluate(1)  # no exception: the loop keeps running
    assert {e.outcome for e in rig.evaluations(1)} == {Outcome.MODEL_UNAVAILABLE}
    assert rig.s.query(Proposal).count() == 0


def test_evaluate_when_model_raises_records_model_unavailable_under_its_label(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    served = serving.production(rig.s)
    assert served is not None
    results = evaluate_many(
        rig.s,
        patient_ids=rig.ids,
        trigger="daily",
        now=rig.at(1),
        predictor=_Raises(served.label, served.model),
    )
    assert {r.evaluation.outcome for r in results} == {Outcome.MODEL_UNAVAILABLE}
    assert {r.evaluation.model_version for r in results} == {"titration:v1"}
    assert all(r.proposal is None for r in results)
    assert "model titration:v1 failed on 30 evaluations: RuntimeError" in caplog.text


def test_evaluate_when_model_fails_to_explain_proposes_nothing_and_keeps_old_proposals(
    rig: Rig,
) -> None:
    rig.evaluate(1)  # a queued proposal for every patient
    served = serving.production(rig.s)
    assert served is not None
    results = evaluate_many(
        rig.s,
        patient_ids=rig.ids,
        trigger="daily",
        now=rig.at(2),
        predictor=_ExplainFails(served.label, served.model),
    )
    rig.s.commit()
    assert {r.evaluation.outcome for r in results} == {Outcome.MODEL_UNAVAILABLE}
    pending = rig.s.query(Proposal).filter(Proposal.status == ProposalStatus.PENDING_REVIEW)
    assert pending.count() == N  # not superseded by proposals that were never made


# ------------------------------------------------------------------ manual rollback


def test_rollback_during_a_rollout_ends_it_and_keeps_the_champion(rig: Rig) -> None:
    rig.to_canary()
    result = rollout.rollback(
        session=rig.s, name="titration", actor="cli:test", reason="odd proposals", now=rig.at(12)
    )
    rig.s.commit()
    assert (result.retired, result.serving, result.rollout_id) == (2, 1, rig.rollout().id)
    ended = rig.rollout()
    assert ended.status == RolloutStatus.ROLLED_BACK
    assert ended.end_reason == "manual rollback: odd proposals"
    assert (rig.status(2), rig.alias("challenger")) == (ModelStatus.RETIRED, None)
    ((_, details),) = _audit_actions(rig.s, "model.rollout.rollback")
    assert details["automatic"] is False
    assert details["stage"] == "canary 10%"


def test_rollback_after_completion_restores_the_previous_production_version(rig: Rig) -> None:
    rig.start()
    minute = 1.0
    for _ in range(5):
        rig.evaluate(minute)
        rig.tick(minute + 10)
        minute += 11
    assert rig.rollout().status == RolloutStatus.COMPLETED

    result = rollout.rollback(
        session=rig.s, name="titration", actor="cli:test", reason="incident 7", now=rig.at(90)
    )
    rig.s.commit()
    assert (result.retired, result.serving, result.artifact_problem) == (2, 1, None)
    assert (rig.status(1), rig.status(2)) == (ModelStatus.PRODUCTION, ModelStatus.RETIRED)
    assert rig.alias("champion") == 1
    served = serving.production(rig.s)
    assert served is not None
    assert served.label == "titration:v1"
    ((_, details),) = _audit_actions(rig.s, "model.rollback")
    assert details == {"retired_version": 2, "restored_version": 1, "restored_artifact_ok": True}
    history = lifecycle.serving_history(rig.s, name="titration")
    assert [i.version for i in history] == [1, 2, 1]


def test_rollback_without_a_previous_version_is_refused(rig: Rig) -> None:
    with pytest.raises(rollout.RolloutRefused) as refused:
        rollout.rollback(session=rig.s, name="titration", actor="x", reason="why", now=rig.at(1))
    assert refused.value.code == "no_previous_version"


def test_rollback_without_a_reason_is_refused(rig: Rig) -> None:
    with pytest.raises(rollout.RolloutRefused) as refused:
        rollout.rollback(session=rig.s, name="titration", actor="x", reason="  ", now=rig.at(1))
    assert (refused.value.code, refused.value.status) == ("reason_required", 422)


def test_serving_without_a_rollout_adds_no_query(
    rig: Rig, count_queries: Callable[[], int]
) -> None:
    serving.production(rig.s)  # warm the artifact cache
    before = count_queries()
    served = serving.production(rig.s)
    assert count_queries() - before == 1
    assert type(served) is ServedModel


@pytest.fixture
def count_queries(world: World) -> Callable[[], int]:
    """The number of statements the session's engine has run so far."""
    from sqlalchemy import event

    engine = world.session.get_bind()
    seen = [0]

    def count(*args: Any) -> None:
        seen[0] += 1

    event.listen(engine, "before_cursor_execute", count)
    return lambda: seen[0]


def test_registry_alias_table_holds_the_champion(rig: Rig) -> None:
    alias = rig.s.get(ModelAlias, ("titration", "champion"))
    assert alias is not None
    assert alias.version == 1
    assert registry.production(rig.s) is not None
