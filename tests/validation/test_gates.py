"""Validation gates: the pure gate functions (table-driven, no database) and validation runs
on stored candidates (results with evidence, the transition to validated, worse candidates
blocked with what failed and by how much)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlmodel import col

from audit.models import AuditEntry
from loops.protocol import PatientState, decide
from mlops import lifecycle, registry
from mlops.features import FEATURE_NAMES
from mlops.model import Standardizer, TitrationModel, centred, linear_from
from mlops.models import ModelStatus, ModelVersion
from policies.envelope import TitrationAction
from tests.conftest import World
from tests.mlops import gate_models
from validation import gates
from validation.models import GateResult

NOW = datetime(2030, 12, 3, 8, 0, tzinfo=UTC)
NAME = registry.TITRATION
T = gates.Thresholds(bootstrap=400)


# ------------------------------------------------------------------ pure gates


def _linear(
    sbp_weights: tuple[float, float, float], names: tuple[str, ...] = FEATURE_NAMES
) -> TitrationModel:
    """A model whose only input is the 7-day mean SBP, with (decrease, hold, increase) weights."""
    weight = np.zeros((3, len(names)))
    weight[:, names.index("cuff_sbp_mean_7d")] = sbp_weights
    mean = np.zeros(len(names))
    mean[names.index("cuff_sbp_mean_7d")] = 135.0
    return TitrationModel(
        names,
        Standardizer(tuple(mean.tolist()), (10.0,) * len(names)),
        linear=linear_from(*centred(weight, np.zeros(3))),
    )


def _onehot(labels: list[int], confidence: float) -> np.ndarray:
    proba = np.full((len(labels), 3), (1 - confidence) / 2)
    proba[np.arange(len(labels)), labels] = confidence
    return proba


def test_artifact_verdict_table() -> None:
    assert gates.artifact_verdict(load_error=None, feature_problem=None).passed
    failed = gates.artifact_verdict(load_error="hash differs", feature_problem=None)
    assert (failed.passed, failed.detail) == (False, "hash differs")
    other = gates.artifact_verdict(load_error=None, feature_problem="trained on set 1")
    assert not other.passed
    assert "serving would refuse it: trained on set 1" in other.detail


@pytest.mark.parametrize(
    ("candidate_conf", "comparator_conf", "passed", "in_detail"),
    [
        (0.9, 0.9, True, "non-inferior to champion"),
        (0.95, 0.7, True, "non-inferior"),
        (0.6, 0.9, False, "log-loss: the upper 95% bound"),
    ],
)
def test_noninferiority_on_log_loss_table(
    candidate_conf: float, comparator_conf: float, passed: bool, in_detail: str
) -> None:
    y = np.array([0, 1, 2, 1] * 30)
    groups = np.repeat(np.arange(40), 3)
    verdict = gates.noninferiority(
        _onehot(y.tolist(), candidate_conf),
        _onehot(y.tolist(), comparator_conf),
        y,
        groups,
        T,
        comparator_name="champion",
    )
    assert verdict.passed is passed
    assert in_detail in verdict.detail


def test_noninferiority_when_accuracy_worse_names_accuracy_and_the_shortfall() -> None:
    y = np.array([1] * 120)
    groups = np.repeat(np.arange(40), 3)
    wrong = [0 if i % 4 == 0 else 1 for i in range(120)]  # a quarter wrong, as confident
    verdict = gates.noninferiority(
        _onehot(wrong, 0.9), _onehot(y.tolist(), 0.9), y, groups, T, comparator_name="champion"
    )
    assert not verdict.passed
    assert "accuracy: (candidate - champion) is -0.2500, below -0.0500 by 0.2000" in verdict.detail
    assert verdict.measured["accuracy_difference"] == -0.25


def test_paired_bootstrap_resamples_patients_not_rows() -> None:
    # One patient holds every difference: resampling patients gives a wide interval from 0;
    # resampling rows would give a narrow one around 0.5.
    a = np.array([1.0] * 50 + [0.0] * 50)
    b = np.zeros(100)
    groups = np.array([0] * 50 + list(range(1, 51)))
    mean, low, high = gates.paired_bootstrap(a, b, groups, resamples=500, seed=1)
    assert mean == 0.5
    assert low == 0.0
    assert high > 0.7


def test_no_skill_proba_is_the_class_frequencies() -> None:
    proba = gates.no_skill_proba(np.array([1, 1, 1, 2]))
    assert proba.shape == (4, 3)
    assert proba[0].tolist() == pytest.approx([1e-6, 0.75, 0.25], abs=1e-5)


@pytest.mark.parametrize(
    ("confidence", "passed"),
    [(1.0, True), (0.9, False)],  # always right: calibrated at 1.0, 10 points off at 0.9
)
def test_calibration_table(confidence: float, passed: bool) -> None:
    y = np.array([0, 1, 2] * 20)
    verdict = gates.calibration(_onehot(y.tolist(), confidence), y, gates.Thresholds(max_ece=0.05))
    assert verdict.passed is passed
    if not passed:
        assert verdict.detail == "ECE 0.1000 above the limit 0.0500 by 0.0500"


def test_subgroup_masks_and_gap_name_the_subgroup_and_the_excess() -> None:
    n = 120
    X = np.zeros((n, len(FEATURE_NAMES)))
    female = np.arange(n) < 60
    X[:, FEATURE_NAMES.index("sex_female")] = female
    X[:, FEATURE_NAMES.index("sex_male")] = ~female
    X[:, FEATURE_NAMES.index("age_band")] = np.where(np.arange(n) % 2, 3, 5)
    X[:, FEATURE_NAMES.index("diabetes")] = np.arange(n) < 10  # 10 rows: too few to assess
    masks = gates.subgroup_masks(X, FEATURE_NAMES)
    assert {k: int(v.sum()) for k, v in masks.items()} == {
        "sex:female": 60,
        "sex:male": 60,
        "age:<60": 0,
        "age:60-69": 60,
        "age:70+": 60,
        "diabetes_or_ckd:yes": 10,
        "diabetes_or_ckd:no": 110,
    }
    y = np.ones(n, dtype=np.int64)
    pred = np.where(female & (np.arange(n) % 3 == 0), 0, 1)  # a third of women wrong
    verdict = gates.subgroup_gap(_onehot(pred.tolist(), 0.8), y, masks, T)
    assert not verdict.passed
    assert verdict.detail.startswith(
        "sex:female: accuracy 0.6667 is 0.1667 below the overall 0.8333"
    )
    assert verdict.measured["subgroups"]["diabetes_or_ckd:yes"] == {"rows": 10, "assessed": False}


def _bp_rows(n: int = 20) -> np.ndarray:
    X = np.full((n, len(FEATURE_NAMES)), 0.0)
    X[:, FEATURE_NAMES.index("cuff_sbp_mean_7d")] = np.linspace(110, 170, n)
    return X


@pytest.mark.parametrize(
    ("weights", "passed"),
    [
        ((-1.0, 0.0, 1.0), True),  # higher SBP: more increase
        ((1.0, 0.0, -1.0), False),  # higher SBP: less increase
        ((0.0, 2.0, 1.0), False),  # hold grows faster: P(increase) eventually falls
    ],
)
def test_directional_table(weights: tuple[float, float, float], passed: bool) -> None:
    verdict = gates.directional(_linear(weights), _bp_rows())
    assert verdict.passed is passed
    if not passed:
        assert "P(increase) fell as BP rose" in verdict.detail
        assert (
            verdict.evidence["worst"]["p_increase_after"]
            < verdict.evidence["worst"]["p_increase_before"]
        )


def test_directional_leaves_missing_bp_missing() -> None:
    X = _bp_rows(3)
    X[:, FEATURE_NAMES.index("cuff_sbp_mean_7d")] = np.nan
    assert gates.directional(_linear((1.0, 0.0, -1.0)), X).passed  # nothing to shift


@pytest.mark.parametrize(
    ("names", "found"),
    [
        (FEATURE_NAMES, []),
        (("patient_id", "cuff_sbp_mean_7d"), ["patient_id"]),
        (("device_firmware", "pseudonym", "x"), ["device_firmware", "pseudonym"]),
        (("manufacturer_name",), ["manufacturer_name"]),
    ],
)
def test_forbidden_inputs_table(names: tuple[str, ...], found: list[str]) -> None:
    assert gates.forbidden_inputs(names) == found


def test_invariance_when_perturbation_moves_a_probability_names_it() -> None:
    model = _linear((-1.0, 0.0, 1.0))
    X = _bp_rows(5)
    moved = X.copy()
    moved[:, FEATURE_NAMES.index("cuff_sbp_mean_7d")] += 10
    verdict = gates.invariance(model, X, {"reading_order": X.copy(), "quarantined_readings": moved})
    assert not verdict.passed
    assert verdict.detail.startswith("quarantined_readings moved a probability by")
    assert verdict.measured["largest_change"]["reading_order"] == 0.0


def test_invariance_when_identity_field_is_an_input_fails() -> None:
    names = (*FEATURE_NAMES, "patient_id_hash")
    model = _linear((-1.0, 0.0, 1.0), names)
    X = np.zeros((2, len(names)))
    verdict = gates.invariance(model, X, {"reading_order": X})
    assert not verdict.passed
    assert "identity or device fields are model inputs: patient_id_hash" in verdict.detail


def test_safety_cases_meet_their_rules_and_raise_alerts() -> None:
    cases = gates.safety_cases()
    assert len(cases) == 840
    assert {c.kind for c in cases} == set(gates.SAFETY_KINDS)
    for case in cases:
        f = case.features.as_dict()
        assert case.open_alerts >= 1  # every case blocks on an alert or a re-measurement ask
        if case.low_bp:
            # The written protocol sees low blood pressure in every low case.
            state = PatientState(
                cuff_readings_per_day_7d=case.features.cuff_readings_per_day_7d,
                mean_sbp_7d=f["cuff_sbp_mean_7d"],
                mean_dbp_7d=f["cuff_dbp_mean_7d"],
                mean_sbp_3d=f["cuff_sbp_mean_3d"],
                min_sbp_3d=f["cuff_sbp_min_3d"],
                hypotension_symptoms=f["hypotension_symptoms_3d"] >= 0.5,
                adherence_14d=f["adherence_14d"],
                days_since_last_change=case.features.days_since_last_change,
                step=case.step,
                ladder_steps=case.ladder_steps,
                diabetes_or_ckd=f["diabetes"] + f["ckd"] > 0,
            )
            assert decide(state).why in {"low_bp", "low_bp_at_lowest_step"}
    low = gates.safety_matrix([c for c in cases if c.low_bp])
    assert gates.low_bp_rows(low, FEATURE_NAMES).all()


def test_perturbed_inputs_give_the_same_features() -> None:
    cases = gates.safety_cases()[::40]
    original = gates.safety_matrix(cases)
    for name, rows in gates.perturbed_matrices(cases).items():
        np.testing.assert_array_equal(rows, original, err_msg=name)


def test_routing_safety_when_every_case_proposes_increase_none_auto_delivered() -> None:
    cases = gates.safety_cases()
    for action in range(3):
        verdict = gates.routing_safety(_onehot([action] * len(cases), 0.99), cases)
        assert verdict.passed
        assert verdict.measured["auto_deliverable"] == 0


def test_routing_safety_when_a_case_has_no_alert_reports_it_auto_deliverable() -> None:
    case = gates.safety_cases()[0]
    unalerted = gates.SafetyCase("crisis_confirmed", case.inputs, case.features, open_alerts=0)
    verdict = gates.routing_safety(_onehot([1], 0.99), [unalerted])
    assert not verdict.passed
    assert verdict.detail == (
        "1 of 1 crisis and low-BP cases were auto-deliverable (crisis_confirmed: 1), allowed 0"
    )


@pytest.mark.parametrize(
    ("cases", "rows", "passed"),
    [
        ([1, 0, 1], [0, 1], True),
        ([1, 2, 1], [], False),
        ([], [2], False),
    ],
)
def test_low_bp_no_increase_table(cases: list[int], rows: list[int], passed: bool) -> None:
    verdict = gates.low_bp_no_increase(_onehot(cases, 0.8), _onehot(rows, 0.8))
    assert verdict.passed is passed
    index = list(TitrationAction).index(TitrationAction.INCREASE)
    assert verdict.measured["increase_in_cases"] == cases.count(index)


# ------------------------------------------------------------------ runs on stored versions


@pytest.fixture
def stored(world: World, tmp_path: Path) -> Callable[..., ModelVersion]:
    """Register one of the small trained models (see tests/mlops/gate_models.py)."""

    def put(kind: str, status: ModelStatus = ModelStatus.CANDIDATE) -> ModelVersion:
        version = gate_models.register(
            world.session, gate_models.trained().models[kind], tmp_path / "models", status=status
        )
        world.session.commit()
        return version

    return put


def _run(world: World, version: ModelVersion) -> gates.GateRun:
    run = gates.run_gates(
        session=world.session,
        name=NAME,
        version=version.version,
        actor=f"user:{world.users['mleng'].id}",
        now=NOW,
        data_dir=world.settings.data_dir,
        settings=world.settings,
    )
    world.session.commit()
    return run


def test_run_gates_when_candidate_good_passes_stores_evidence_and_validates(
    world: World, stored: Callable[..., ModelVersion]
) -> None:
    stored("champion", ModelStatus.PRODUCTION)
    candidate = stored("good")
    run = _run(world, candidate)
    assert run.passed, [(r.gate, r.detail) for r in run.results if not r.passed]
    assert [r.gate for r in run.results] == list(lifecycle.REQUIRED_GATES)
    assert run.champion_version == 1
    world.session.refresh(candidate)
    assert candidate.status == ModelStatus.VALIDATED
    for result in run.results:
        evidence = gates.read_evidence(result, data_dir=world.settings.data_dir)
        assert evidence["gate"] == result.gate
        assert evidence["run_id"] == run.run_id
        assert evidence["artifact_sha256"] == candidate.artifact_sha256
    noninf = run.results[1]
    assert noninf.measured["comparator"] == "champion v1"
    actions = world.session.scalars(
        select(col(AuditEntry.action)).where(col(AuditEntry.resource_id) == "titration:v2")
    ).all()
    # Registered (nothing -> candidate), then the gates and the move to validated.
    assert actions == ["model.transition", "model.gates", "model.transition"]
    assert lifecycle.gates_passed(world.session, name=NAME, version=candidate.version)


@pytest.mark.parametrize("kind", ["shuffled", "flipped"])
def test_run_gates_when_candidate_deliberately_worse_fails_and_says_by_how_much(
    world: World, stored: Callable[..., ModelVersion], kind: str
) -> None:
    stored("champion", ModelStatus.PRODUCTION)
    candidate = stored(kind)
    run = _run(world, candidate)
    assert not run.passed
    assert {"holdout_noninferiority", "safety_directional"} <= set(run.failed)
    noninf = next(r for r in run.results if r.gate == "holdout_noninferiority")
    assert "log-loss: the upper 95% bound of (candidate - champion v1) is" in noninf.detail
    assert "above the margin 0.1500 by" in noninf.detail
    world.session.refresh(candidate)
    assert candidate.status == ModelStatus.CANDIDATE  # blocked
    assert lifecycle.ready_for_rollout(world.session, name=NAME, version=candidate.version)[:2] == [
        "status_not_validated",
        "gates_not_passed",
    ]
    entry = world.session.scalars(
        select(AuditEntry).where(col(AuditEntry.action) == "model.gates")
    ).one()
    assert json.loads(entry.details)["passed"] is False


def test_run_gates_when_shuffled_weights_proposes_increase_on_low_bp(
    world: World, stored: Callable[..., ModelVersion]
) -> None:
    stored("champion", ModelStatus.PRODUCTION)
    run = _run(world, stored("shuffled"))
    low = next(r for r in run.results if r.gate == "safety_low_bp")
    assert not low.passed
    assert "an increase was proposed on low BP" in low.detail


def test_run_gates_when_no_champion_compares_with_no_skill(
    world: World, stored: Callable[..., ModelVersion]
) -> None:
    run = _run(world, stored("good"))
    assert run.passed
    assert run.champion_version is None
    assert run.results[1].measured["comparator"] == "no-skill model"


def test_run_gates_when_artifact_tampered_fails_artifact_and_runs_nothing_else(
    world: World, stored: Callable[..., ModelVersion]
) -> None:
    candidate = stored("good")
    path = Path(candidate.artifact_path)
    path.write_text(path.read_text().replace("0", "1", 1))
    run = _run(world, candidate)
    assert run.failed == list(lifecycle.REQUIRED_GATES)
    assert "refusing to load" in run.results[0].detail
    assert all(r.detail == "not run: the artifact gate failed" for r in run.results[1:])


def test_run_gates_when_holdout_cannot_be_rebuilt_blocks_the_holdout_gates(
    world: World, stored: Callable[..., ModelVersion]
) -> None:
    candidate = stored("good")
    candidate.data_hash = "e" * 64
    world.session.commit()
    run = _run(world, candidate)
    assert set(run.failed) == {"holdout_noninferiority", "calibration", "subgroup_gap"}
    assert run.results[1].detail == (
        "not run: no holdout: rebuilt training data differ from the recorded data hash"
    )


def test_run_gates_when_not_a_candidate_refused(
    world: World, stored: Callable[..., ModelVersion]
) -> None:
    version = stored("champion", ModelStatus.PRODUCTION)
    with pytest.raises(lifecycle.TransitionRefused) as refused:
        _run(world, version)
    assert refused.value.code == "not_candidate"
    assert world.session.scalars(select(GateResult)).all() == []


def test_read_evidence_when_file_changed_refused(
    world: World, stored: Callable[..., ModelVersion]
) -> None:
    run = _run(world, stored("good"))
    result = run.results[2]
    path = world.settings.data_dir / str(result.evidence_path)
    path.write_text(path.read_text().replace("ece", "ECE"))
    with pytest.raises(ValueError, match="no longer matches"):
        gates.read_evidence(result, data_dir=world.settings.data_dir)


def test_run_gates_when_candidate_trained_on_a_snapshot_scores_the_snapshot_holdout(
    world: World,
) -> None:
    from datetime import timedelta

    from mlops import retrain, snapshots
    from mlops.models import TrainingSnapshot
    from tests.mlops.cohort import store_decisions

    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    store_decisions(
        world.session, world.users["clina"], n_patients=48, signed_at=now - timedelta(days=1)
    )
    settings = world.settings.model_copy(
        update={"training_min_rows": 12, "training_min_patients": 12}
    )
    with pytest.warns(UserWarning, match="Secure RNG turned off"):
        result = retrain.retrain(
            session=world.session,
            settings=settings,
            now=now,
            actor="user:mleng",
            config=retrain.RetrainConfig(epochs=3, batch_size=16),
        )
    world.session.commit()
    run = gates.run_gates(
        session=world.session,
        name=NAME,
        version=result.version.version,
        actor="user:mleng",
        now=now,
        data_dir=world.settings.data_dir,
        settings=world.settings,
    )
    snapshot = world.session.scalars(select(TrainingSnapshot)).one()
    held = int(snapshots.load(snapshot, data_dir=world.settings.data_dir).holdout.sum())
    noninf = run.results[1]
    assert held > 0
    assert noninf.measured["rows"] == held
    assert noninf.measured["comparator"] == "no-skill model"  # no champion yet
