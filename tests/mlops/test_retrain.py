"""Private retraining: snapshot, data checks, ledger, DP-SGD and baseline, a registered
candidate with lineage and privacy record; refusals; the epsilon cross-checked with Google's
dp-accounting; when a retraining is due."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core.config import Settings
from audit.models import AuditEntry
from mlops import ledger, registry, retrain, snapshots
from mlops.dp import RDP_ORDERS
from mlops.features import FEATURE_NAMES
from mlops.model import CLASSES, TitrationModel, index_of
from mlops.models import ModelStatus, ModelVersion, PrivacySpend, SnapshotStatus
from policies.envelope import TitrationAction
from tests.conftest import World
from tests.mlops.cohort import add_cuff_readings, store_decisions
from validation.models import DriftReport

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
FAST = retrain.RetrainConfig(epochs=3, batch_size=16)


def small(settings: Settings, **update: Any) -> Settings:
    """Settings for a tiny cohort: small minimum sizes."""
    values: dict[str, Any] = {"training_min_rows": 12, "training_min_patients": 12}
    return settings.model_copy(update=values | update)


def run(session: Session, settings: Settings, **kw: Any) -> retrain.RetrainResult:
    """Retrain, expecting Opacus's warning that secure_mode is off (it is, on purpose)."""
    with pytest.warns(UserWarning, match="Secure RNG turned off"):
        return retrain.retrain(
            session=session,
            settings=settings,
            now=kw.pop("now", NOW),
            actor=kw.pop("actor", "user:mleng"),
            config=kw.pop("config", FAST),
            **kw,
        )


def champion(world: World) -> ModelVersion:
    """A production version (its artifact is never read here) to be the candidate's parent."""
    path = world.settings.data_dir / "v1.json"
    path.write_text("{}")
    version = registry.register(
        world.session,
        name=registry.TITRATION,
        artifact_path=path,
        artifact_sha256="0" * 64,
        data_hash="d" * 64,
        feature_names=FEATURE_NAMES,
        params={},
        metrics={},
        privacy={},
        created_by="test",
        status=ModelStatus.PRODUCTION,
    )
    world.session.commit()
    return version


def audits(session: Session, **filters: str) -> int:
    """Audit entries matching column filters (in the test's own session: SQLite has one
    writer, and this session may hold it)."""
    stmt = select(func.count()).select_from(AuditEntry)
    for name, value in filters.items():
        stmt = stmt.where(getattr(AuditEntry, name) == value)
    return int(session.scalar(stmt) or 0)


@pytest.fixture
def cohort(world: World) -> list[str]:
    """48 patients with one signed decision each, labels balanced."""
    return store_decisions(
        world.session, world.users["clina"], n_patients=48, signed_at=NOW - timedelta(days=1)
    ).patient_ids


@pytest.fixture
def trained(world: World, cohort: list[str]) -> retrain.RetrainResult:
    parent = champion(world)
    result = run(world.session, small(world.settings), reason="test")
    world.session.commit()
    assert result.parent_version == parent.version
    return result


def test_retrain_when_data_valid_registers_a_candidate_with_lineage(
    world: World, trained: retrain.RetrainResult
) -> None:
    v = trained.version
    assert v.status == ModelStatus.CANDIDATE
    assert v.parent_version == 1
    assert v.data_hash == trained.snapshot.content_hash
    assert trained.snapshot.status == SnapshotStatus.VALID
    assert v.created_by == "user:mleng"
    assert v.params["snapshot"]["id"] == trained.snapshot.id
    assert v.params["labels"] == "clinician decisions"
    assert v.params["split"]["by"] == "patient"
    # The artifact is immutable and checked by hash on load.
    model = TitrationModel.load(Path(v.artifact_path), v.artifact_sha256)
    assert model.feature_names == FEATURE_NAMES
    assert model.metadata["feature_set"] == "clinaiops-features/2"
    assert model.metadata["scales_from_training_data"] is False
    assert model.standardizer == retrain.public_standardizer()


def test_retrain_when_done_records_the_privacy_guarantee(
    world: World, trained: retrain.RetrainResult
) -> None:
    p = trained.version.privacy
    n = trained.version.metrics["train_rows"]
    assert p["private"] is True
    assert 0 < p["epsilon"] <= 3.0 + 0.02  # the default target, within Opacus's slack
    assert p["delta"] == pytest.approx(1 / (10 * n))
    assert p["accountant"] == "rdp"
    assert p["poisson_sampling"] is True
    assert p["max_grad_norm"] == FAST.max_grad_norm
    assert p["noise_multiplier"] > 0
    assert p["steps"] > 0
    assert 0 < p["sample_rate"] <= 1
    assert p["secure_mode"] is False
    assert "torchcsprng" in p["secure_mode_reason"]
    assert p["privacy_unit"] == "patient"  # one row per patient
    assert p["rows_per_patient_max"] == 1
    assert p["ledger"]["spent_epsilon_after"] == pytest.approx(p["epsilon"])


def test_retrain_when_done_records_metrics_overall_baseline_and_subgroups(
    world: World, trained: retrain.RetrainResult
) -> None:
    m = trained.version.metrics
    for key in ("dp", "non_dp_baseline"):
        assert 0.0 <= m[key]["accuracy"] <= 1.0
        assert m[key]["n"] == m["holdout_rows"]
    assert m["privacy_cost"]["accuracy"] == pytest.approx(
        m["non_dp_baseline"]["accuracy"] - m["dp"]["accuracy"]
    )
    subgroups = m["subgroups"]["dp"]
    assert set(subgroups) == {"sex", "age_band", "diabetes_or_ckd"}
    for groups in subgroups.values():
        assert sum(g["n"] for g in groups.values()) == m["holdout_rows"]
    assert m["direction_constrained"].keys() == {"dp", "non_dp_baseline"}


def test_retrain_when_done_constrains_symptoms_never_towards_increase(
    trained: retrain.RetrainResult,
) -> None:
    v = trained.version
    model = TitrationModel.load(Path(v.artifact_path), v.artifact_sha256)
    j = FEATURE_NAMES.index("hypotension_symptoms_3d")
    inc = index_of(TitrationAction.INCREASE)
    others = [k for k in range(len(CLASSES)) if k != inc]
    assert all(model.weight[inc, j] <= model.weight[k, j] + 1e-12 for k in others)


def test_retrain_when_done_spends_the_ledger_and_audits(
    world: World, trained: retrain.RetrainResult
) -> None:
    spend = trained.spend
    assert (spend.cohort, spend.model_version) == ("clinic", trained.version.version)
    assert spend.epsilon == pytest.approx(trained.epsilon)
    assert spend.snapshot_id == trained.snapshot.id
    assert spend.details["noise_multiplier"] == trained.version.privacy["noise_multiplier"]
    assert ledger.spent(world.session, cohort="clinic") == pytest.approx(trained.epsilon)
    label = registry.label(trained.version)
    assert audits(world.session, action="model.train", resource_id=label, outcome="success") == 1
    entry = world.session.scalars(
        select(AuditEntry).where(col(AuditEntry.action) == "model.train")
    ).one()
    assert '"parent_version":1' in entry.details
    assert entry.actor == "user:mleng"


def test_retrain_epsilon_when_recomputed_by_dp_accounting_agrees(
    trained: retrain.RetrainResult,
) -> None:
    from dp_accounting import dp_event  # type: ignore[import-untyped]
    from dp_accounting.rdp import rdp_privacy_accountant  # type: ignore[import-untyped]

    p = trained.version.privacy
    event = dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(
            p["sample_rate"], dp_event.GaussianDpEvent(p["noise_multiplier"])
        ),
        p["steps"],
    )
    google = rdp_privacy_accountant.RdpAccountant(list(RDP_ORDERS))
    google.compose(event)
    # The same RDP analysis of the Poisson-subsampled Gaussian in an independent code base:
    # only series truncation and rounding differ (below 0.1% measured), so 1% relative.
    assert p["epsilon"] == pytest.approx(google.get_epsilon(p["delta"]), rel=0.01)
    assert trained.spend.epsilon == pytest.approx(google.get_epsilon(p["delta"]), rel=0.01)


def test_retrain_epsilon_when_prv_accountant_agrees_with_dp_accounting_pld(
    world: World, cohort: list[str]
) -> None:
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant  # type: ignore[import-untyped]

    result = run(world.session, small(world.settings, retrain_accountant="prv"))
    p = result.version.privacy
    assert p["accountant"] == "prv"
    event = dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(
            p["sample_rate"], dp_event.GaussianDpEvent(p["noise_multiplier"])
        ),
        p["steps"],
    )
    google = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
    google.compose(event)
    # Two numerical methods for the same exact epsilon, each within a few hundredths (Opacus
    # PRV: eps_error 0.01; Google PLD at a 1e-3 grid): 0.05 absolute covers both.
    assert p["epsilon"] == pytest.approx(google.get_epsilon(p["delta"]), abs=0.05)


def test_retrain_when_budget_would_be_exceeded_refuses_before_training(
    world: World, cohort: list[str]
) -> None:
    ledger.record(
        world.session,
        cohort="clinic",
        snapshot_id=None,
        model_name="titration",
        model_version=None,
        epsilon=8.0,
        delta=1e-4,
        accountant="rdp",
        details={},
        created_by="earlier",
        now=NOW - timedelta(days=30),
    )
    world.session.commit()
    with pytest.raises(retrain.RetrainRefused) as err:
        # No Opacus warning: training never starts.
        retrain.retrain(
            session=world.session,
            settings=small(world.settings),
            now=NOW,
            actor="user:mleng",
            target_epsilon=2.5,
        )
    assert err.value.code == "privacy_budget_exceeded"
    assert "8 spent + 2.5 requested = 10.5, above the budget of 10 by 0.5" in err.value.detail
    world.session.commit()  # keeps the refusal's audit entry and the snapshot
    assert world.session.scalar(select(func.count()).select_from(ModelVersion)) == 0
    assert world.session.scalar(select(func.count()).select_from(PrivacySpend)) == 1
    assert audits(world.session, action="model.train", outcome="failure") == 1
    entry = world.session.scalars(
        select(AuditEntry).where(col(AuditEntry.action) == "model.train")
    ).one()
    assert '"code":"privacy_budget_exceeded"' in entry.details
    assert '"excess_epsilon":0.5' in entry.details
    # A smaller run still fits.
    result = run(world.session, small(world.settings), target_epsilon=2.0)
    assert ledger.spent(world.session, cohort="clinic") == pytest.approx(8.0 + result.epsilon)


def test_retrain_when_budget_exhausted_by_runs_refuses_the_next(
    world: World, cohort: list[str]
) -> None:
    settings = small(world.settings, privacy_budget_epsilon=2.0)
    first = run(world.session, settings, target_epsilon=1.5)
    snap = first.snapshot
    with pytest.raises(retrain.RetrainRefused, match="privacy_budget_exceeded"):
        retrain.retrain(
            session=world.session,
            settings=settings,
            now=NOW,
            actor="user:mleng",
            snapshot=snap,  # even the same snapshot, given explicitly
            target_epsilon=1.0,
        )


def test_retrain_when_data_checks_fail_refuses_naming_the_check(world: World) -> None:
    store_decisions(world.session, world.users["clina"], n_patients=6, signed_at=NOW)
    with pytest.raises(retrain.RetrainRefused) as err:
        retrain.retrain(
            session=world.session,
            settings=small(world.settings),
            now=NOW + timedelta(hours=1),
            actor="user:mleng",
        )
    assert err.value.code == "data_checks_failed"
    assert err.value.status == 422
    assert "min_rows: 6 rows, at least 12 needed (6 short)" in err.value.detail
    world.session.commit()
    snap = snapshots.latest(world.session, cohort="clinic")
    assert snap is not None
    assert snap.status == SnapshotStatus.INVALID
    assert audits(world.session, action="model.train", outcome="failure") == 1


def test_retrain_when_nothing_new_since_last_run_refuses(
    world: World, trained: retrain.RetrainResult
) -> None:
    with pytest.raises(retrain.RetrainRefused) as err:
        retrain.retrain(
            session=world.session,
            settings=small(world.settings),
            now=NOW + timedelta(hours=1),
            actor="user:mleng",
        )
    assert err.value.code == "no_new_data"
    assert f"as snapshot {trained.snapshot.id}, which trained" in err.value.detail


def test_retrain_when_only_outcomes_arrived_since_last_run_refuses(
    world: World, cohort: list[str], trained: retrain.RetrainResult
) -> None:
    # Readings 14-28 days after the decisions give them outcomes: another snapshot (another
    # content hash), but the same training rows, so another run would only spend privacy.
    add_cuff_readings(world, cohort[0], start=NOW + timedelta(days=14), days=7)
    with pytest.raises(retrain.RetrainRefused) as err:
        retrain.retrain(
            session=world.session,
            settings=small(world.settings),
            now=NOW + timedelta(days=30),
            actor="user:mleng",
        )
    assert err.value.code == "no_new_data"
    latest = snapshots.latest(world.session, cohort="clinic")
    assert latest is not None
    assert latest.id != trained.snapshot.id
    assert latest.label_counts["outcome_controlled"] == 1
    # A new decision is something new.
    store_decisions(
        world.session,
        world.users["clina"],
        n_patients=1,
        signed_at=NOW + timedelta(days=30),
        prefix="N",
    )
    result = run(world.session, small(world.settings), now=NOW + timedelta(days=31))
    assert result.snapshot.rows == trained.snapshot.rows + 1


def test_retrain_when_snapshot_of_another_cohort_or_unknown_cohort_refuses(
    world: World, trained: retrain.RetrainResult
) -> None:
    with pytest.raises(retrain.RetrainRefused, match="snapshot_cohort_mismatch"):
        retrain.retrain(
            session=world.session,
            settings=small(world.settings),
            now=NOW,
            actor="user:mleng",
            cohort="simulated",
            snapshot=trained.snapshot,
        )
    with pytest.raises(retrain.RetrainRefused, match="unknown_cohort"):
        retrain.retrain(
            session=world.session,
            settings=small(world.settings),
            now=NOW,
            actor="user:mleng",
            cohort="team-a",
        )


def test_retrain_when_snapshot_file_changed_refuses(
    world: World, trained: retrain.RetrainResult
) -> None:
    path = world.settings.data_dir / trained.snapshot.path
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(retrain.RetrainRefused) as err:
        retrain.retrain(
            session=world.session,
            settings=small(world.settings),
            now=NOW,
            actor="user:mleng",
            snapshot=trained.snapshot,
        )
    assert (err.value.code, err.value.status) == ("snapshot_file_changed", 409)


def test_retrain_when_patients_have_several_rows_charges_group_privacy(world: World) -> None:
    store_decisions(
        world.session, world.users["clina"], n_patients=24, per_patient=2, signed_at=NOW
    )
    settings = small(world.settings, training_max_rows_per_patient=2)
    result = run(world.session, settings, now=NOW + timedelta(hours=1), target_epsilon=1.0)
    p = result.version.privacy
    assert p["privacy_unit"] == "row"
    assert p["rows_per_patient_max"] == 2
    assert p["patient_epsilon"] == pytest.approx(2 * p["epsilon"])
    assert p["patient_delta"] == pytest.approx(2 * math.exp(p["epsilon"]) * p["delta"])
    assert result.spend.epsilon == pytest.approx(2 * result.epsilon)
    assert result.spend.details["row_epsilon"] == result.epsilon


def test_retrain_when_simulated_cohort_trains_on_the_simulated_source(world: World) -> None:
    snap = snapshots.build_simulated(
        session=world.session,
        now=NOW,
        actor="test",
        data_dir=world.settings.data_dir,
        n_patients=24,
        days=35,
        seed=5,
    )
    result = run(world.session, small(world.settings), cohort="simulated", snapshot=snap)
    assert result.version.params["labels"].startswith("protocol v1")
    assert result.version.privacy["privacy_unit"] == "row"
    assert result.version.privacy["patient_epsilon"] is None
    assert result.spend.cohort == "simulated"
    assert ledger.spent(world.session, cohort="clinic") == 0.0


def test_retrain_due_when_enough_new_decisions_says_why(world: World) -> None:
    settings = small(world.settings, retrain_min_new_decisions=10)
    assert retrain.retrain_due(session=world.session, now=NOW, settings=settings) is None
    store_decisions(world.session, world.users["clina"], n_patients=9, signed_at=NOW)
    later = NOW + timedelta(hours=1)
    assert retrain.retrain_due(session=world.session, now=later, settings=settings) is None
    store_decisions(world.session, world.users["clina"], n_patients=1, signed_at=NOW, prefix="E")
    why = retrain.retrain_due(session=world.session, now=later, settings=settings)
    assert why == "10 new clinician decisions so far (retrain at 10)"
    snapshots.build_from_decisions(
        session=world.session,
        now=later,
        actor="test",
        data_dir=world.settings.data_dir,
    )
    world.session.commit()
    assert retrain.retrain_due(session=world.session, now=later, settings=settings) is None


def test_retrain_due_when_drift_alert_after_last_snapshot_says_why(world: World) -> None:
    settings = small(world.settings)
    store_decisions(world.session, world.users["clina"], n_patients=3, signed_at=NOW)
    snapshots.build_from_decisions(
        session=world.session,
        now=NOW + timedelta(hours=1),
        actor="t",
        data_dir=Path(world.settings.data_dir),
    )
    later = NOW + timedelta(days=2)

    def report(status: str, at: datetime) -> DriftReport:
        row = DriftReport(
            created_at=at,
            created_by="system",
            window_start=at - timedelta(days=7),
            window_end=at,
            status=status,
            headline="x",
            reference="training:x",
            feature_set="clinaiops-features/2",
        )
        world.session.add(row)
        world.session.commit()
        return row

    report("alert", NOW + timedelta(days=1))
    # An alert, but no decision since the snapshot: retraining would relearn the same data.
    assert retrain.retrain_due(session=world.session, now=later, settings=settings) is None
    store_decisions(
        world.session,
        world.users["clina"],
        n_patients=1,
        signed_at=NOW + timedelta(days=1),
        prefix="N",
    )
    alert = world.session.scalars(select(DriftReport)).one()
    why = retrain.retrain_due(session=world.session, now=later, settings=settings)
    assert (
        why
        == f"open drift alert (drift report {alert.id}); 1 new decisions since the last snapshot"
    )
    report("ok", NOW + timedelta(days=1, hours=1))  # the newest report no longer alerts
    assert retrain.retrain_due(session=world.session, now=later, settings=settings) is None


def test_subgroup_masks_when_features_given_partition_each_dimension() -> None:
    idx = {n: j for j, n in enumerate(FEATURE_NAMES)}
    X = np.zeros((5, len(FEATURE_NAMES)))
    X[:, idx["sex_female"]] = [1, 0, 0, 1, 0]
    X[:, idx["sex_male"]] = [0, 1, 0, 0, 1]
    X[:, idx["age_band"]] = [0, 2, 3, 5, np.nan]
    X[:, idx["diabetes"]] = [1, 0, 0, 0, 0]
    X[:, idx["ckd"]] = [0, 0, 1, 0, 0]
    masks = retrain.subgroup_masks(X, FEATURE_NAMES)
    assert masks["sex"]["other_or_unknown"].tolist() == [False, False, True, False, False]
    assert masks["age_band"]["70+"].tolist() == [False, False, False, True, False]
    assert masks["age_band"]["unknown"].tolist() == [False, False, False, False, True]
    assert masks["diabetes_or_ckd"]["yes"].tolist() == [True, False, True, False, False]
    for groups in masks.values():
        assert (sum(m.astype(int) for m in groups.values()) == 1).all()


@pytest.mark.parametrize(
    ("epsilon", "delta", "k", "expected"),
    [
        (1.0, 1e-5, 1, (1.0, 1e-5)),
        (1.0, 1e-5, 2, (2.0, 2 * math.e * 1e-5)),
        (3.0, 1e-5, 8, (24.0, 1.0)),  # 8 e^21 1e-5 > 1: no delta guarantee left
    ],
)
def test_group_privacy_when_k_rows_scales_epsilon_and_delta(
    epsilon: float, delta: float, k: int, expected: tuple[float, float]
) -> None:
    got = retrain.group_privacy(epsilon, delta, k)
    assert got == pytest.approx(expected)


def test_public_scales_when_defined_cover_every_feature_in_order() -> None:
    assert set(retrain.PUBLIC_SCALES) == set(FEATURE_NAMES)
    scales = retrain.public_standardizer()
    assert len(scales.mean) == len(FEATURE_NAMES)
    assert all(s > 0 for s in scales.scale)


def test_retrain_when_run_twice_on_one_snapshot_draws_fresh_secret_noise(
    world: World, trained: retrain.RetrainResult
) -> None:
    # The noise must not follow from the data (nor from anything recorded): a second run on
    # the same snapshot gives other weights, and no seed is stored.
    again = run(world.session, small(world.settings), snapshot=trained.snapshot)
    first = TitrationModel.load(
        Path(trained.version.artifact_path), trained.version.artifact_sha256
    )
    second = TitrationModel.load(Path(again.version.artifact_path), again.version.artifact_sha256)
    assert not np.array_equal(first.weight, second.weight)
    assert again.version.params["training"]["seed"].startswith("secret")
    assert ledger.spent(world.session, cohort="clinic") == pytest.approx(
        trained.epsilon + again.epsilon
    )


def test_retrain_when_given_snapshot_checks_it_with_todays_thresholds(
    world: World, cohort: list[str]
) -> None:
    strict = snapshots.build_from_decisions(
        session=world.session,
        now=NOW,
        actor="test",
        data_dir=world.settings.data_dir,
        thresholds=retrain.thresholds_from(world.settings),  # 100 rows needed: invalid
    )
    world.session.commit()
    assert strict.status == SnapshotStatus.INVALID
    result = run(world.session, small(world.settings), snapshot=strict)
    assert result.version.data_hash == strict.content_hash
    assert strict.status == SnapshotStatus.INVALID  # its record is left as built
    with pytest.raises(retrain.RetrainRefused, match="min_rows: 48 rows, at least 100 needed"):
        retrain.retrain(
            session=world.session,
            settings=world.settings,
            now=NOW,
            actor="user:mleng",
            snapshot=strict,
        )
