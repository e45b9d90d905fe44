"""Training snapshots: built from clinician decisions, named by their content, split by
patient, checked by file hash, with outcomes as they arrive and data checks recorded."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from mlops import snapshots
from mlops.features import FEATURE_NAMES
from mlops.models import SnapshotStatus, TrainingSnapshot
from tests.conftest import World
from tests.mlops.cohort import add_cuff_readings, store_decisions
from validation.data_checks import Thresholds

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SMALL = Thresholds(min_rows=12, min_patients=12, min_holdout_patients=2)


def build(world: World, *, now: datetime = NOW, cap: int = 1, **kw: object) -> TrainingSnapshot:
    return snapshots.build_from_decisions(
        session=world.session,
        now=now,
        cohort="clinic",
        actor="test",
        data_dir=world.settings.data_dir,
        max_rows_per_patient=cap,
        thresholds=kw.pop("thresholds", SMALL),  # type: ignore[arg-type]
    )


def test_build_from_decisions_when_valid_stores_rows_file_and_checks(world: World) -> None:
    stored = store_decisions(
        world.session, world.users["clina"], n_patients=24, signed_at=NOW - timedelta(days=1)
    )
    snap = build(world)
    world.session.commit()
    assert snap.status == SnapshotStatus.VALID
    assert snap.source == snapshots.SOURCE_DECISIONS
    assert (snap.rows, snap.patients) == (24, 24)
    assert snap.train_patients + snap.holdout_patients == 24
    assert snap.holdout_patients > 0
    assert snap.label_counts["decrease"] == snap.label_counts["hold"] == 8
    assert snap.label_counts["outcome_unknown"] == 24  # no readings after the decisions
    assert snap.window_end == NOW - timedelta(days=1)
    path = world.settings.data_dir / snap.path
    assert snap.file_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    names = [c["name"] for c in snap.checks]
    assert names[0] == "row_selection"
    assert {"schema", "ranges", "missingness", "label_balance", "min_rows"} <= set(names)
    data = snapshots.load(snap, data_dir=world.settings.data_dir)
    assert data.feature_names == FEATURE_NAMES
    assert sorted(data.y.tolist()) == sorted(stored.labels)
    # Patients appear only as pseudonyms.
    assert set(data.groups.tolist()) == {snapshots.patient_group(p) for p in stored.patient_ids}
    assert not set(stored.patient_ids) & set(data.groups.tolist())


def test_build_from_decisions_when_rebuilt_returns_the_same_snapshot(world: World) -> None:
    store_decisions(world.session, world.users["clina"], n_patients=15, signed_at=NOW)
    first = build(world, now=NOW + timedelta(hours=1))
    world.session.commit()
    again = build(world, now=NOW + timedelta(hours=2))
    assert again.id == first.id
    assert again.content_hash == first.content_hash
    assert world.session.scalar(select(func.count()).select_from(TrainingSnapshot)) == 1


def test_content_hash_when_rows_reordered_is_unchanged(world: World) -> None:
    store_decisions(world.session, world.users["clina"], n_patients=15, signed_at=NOW)
    snap = build(world, now=NOW + timedelta(hours=1))
    data = snapshots.load(snap, data_dir=world.settings.data_dir)
    order = np.random.default_rng(1).permutation(data.n)
    shuffled = snapshots.SnapshotData(
        source=data.source,
        feature_names=data.feature_names,
        X=data.X[order],
        y=data.y[order],
        groups=data.groups[order],
        as_of=data.as_of[order],
        outcome=data.outcome[order],
    )
    assert shuffled.content_hash() == snap.content_hash
    changed = snapshots.SnapshotData(
        source=data.source,
        feature_names=data.feature_names,
        X=data.X,
        y=np.roll(data.y, 1),
        groups=data.groups,
        as_of=data.as_of,
        outcome=data.outcome,
    )
    assert changed.content_hash() != snap.content_hash


def test_snapshot_file_when_rebuilt_elsewhere_has_identical_bytes(
    world: World, tmp_path: Path
) -> None:
    store_decisions(world.session, world.users["clina"], n_patients=15, signed_at=NOW)
    snap = build(world, now=NOW + timedelta(hours=1))
    data = snapshots.load(snap, data_dir=world.settings.data_dir).canonical()
    again = snapshots._file_bytes(data, snap.content_hash)
    assert hashlib.sha256(again).hexdigest() == snap.file_sha256


def test_split_when_patient_has_several_rows_keeps_them_on_one_side(world: World) -> None:
    stored = store_decisions(
        world.session, world.users["clina"], n_patients=20, per_patient=3, signed_at=NOW
    )
    snap = build(world, now=NOW + timedelta(hours=1), cap=3)
    data = snapshots.load(snap, data_dir=world.settings.data_dir)
    assert data.n == 60
    held = set(data.groups[data.holdout].tolist())
    trained = set(data.groups[data.train].tolist())
    assert held
    assert trained
    assert not held & trained
    # The side is a function of the patient id alone: the same answer from the id.
    expected = {
        snapshots.patient_group(p)
        for p in stored.patient_ids
        if snapshots.hash_fraction(snapshots.patient_group(p), "clinaiops-split/1")
        < snapshots.HOLDOUT_SHARE
    }
    assert held == expected
    assert data.max_rows_per_patient() == 3


def test_build_from_decisions_when_over_cap_keeps_the_newest_per_patient(world: World) -> None:
    store_decisions(
        world.session, world.users["clina"], n_patients=15, per_patient=3, signed_at=NOW
    )
    snap = build(world, now=NOW + timedelta(hours=1), cap=1)
    assert (snap.rows, snap.patients) == (15, 15)
    data = snapshots.load(snap, data_dir=world.settings.data_dir)
    assert set(data.as_of.tolist()) == {"2026-12-01T12:00:00.000000Z"}
    selection = snap.checks[0]
    assert selection["measured"]["over_patient_cap"] == 30
    assert selection["threshold"] == {"max_rows_per_patient": 1}


def test_build_from_decisions_when_features_of_another_set_excludes_them(world: World) -> None:
    clin = world.users["clina"]
    store_decisions(world.session, clin, n_patients=12, signed_at=NOW)
    store_decisions(world.session, clin, n_patients=1, signed_at=NOW, prefix="O", spoil="old_set")
    store_decisions(world.session, clin, n_patients=1, signed_at=NOW, prefix="B", spoil="bad_hash")
    later = NOW + timedelta(days=1)  # signed after `now`: not yet
    store_decisions(world.session, clin, n_patients=1, signed_at=later, prefix="L")
    snap = build(world, now=NOW + timedelta(hours=1))
    assert snap.rows == 12
    assert snap.checks[0]["measured"]["other_feature_set"] == 2
    assert snap.checks[0]["measured"]["decisions"] == 14


def test_build_from_decisions_when_too_few_is_invalid_and_says_why(world: World) -> None:
    store_decisions(world.session, world.users["clina"], n_patients=6, signed_at=NOW)
    snap = build(world, now=NOW + timedelta(hours=1))
    assert snap.status == SnapshotStatus.INVALID
    failed = {c["name"]: c for c in snap.checks if not c["passed"]}
    assert failed["min_rows"]["detail"] == "6 rows, at least 12 needed (6 short)"
    assert failed["min_patients"]["measured"] == 6


def test_build_from_decisions_when_none_stores_an_empty_invalid_snapshot(world: World) -> None:
    snap = build(world)
    assert snap.rows == 0
    assert snap.status == SnapshotStatus.INVALID
    assert snap.window_start is None
    assert snapshots.load(snap, data_dir=world.settings.data_dir).n == 0


def test_load_when_file_changed_refuses(world: World) -> None:
    store_decisions(world.session, world.users["clina"], n_patients=15, signed_at=NOW)
    snap = build(world, now=NOW + timedelta(hours=1))
    path = world.settings.data_dir / snap.path
    payload = bytearray(path.read_bytes())
    payload[-40] ^= 0x01
    path.write_bytes(bytes(payload))
    with pytest.raises(snapshots.SnapshotFileError) as err:
        snapshots.load(snap, data_dir=world.settings.data_dir)
    assert err.value.code == "snapshot_file_changed"
    path.unlink()
    with pytest.raises(snapshots.SnapshotFileError) as err:
        snapshots.load(snap, data_dir=world.settings.data_dir)
    assert err.value.code == "snapshot_file_missing"


def test_build_when_file_lost_restores_identical_bytes(world: World) -> None:
    store_decisions(world.session, world.users["clina"], n_patients=15, signed_at=NOW)
    snap = build(world, now=NOW + timedelta(hours=1))
    world.session.commit()
    (world.settings.data_dir / snap.path).unlink()
    again = build(world, now=NOW + timedelta(hours=2))
    assert again.id == snap.id
    assert snapshots.load(again, data_dir=world.settings.data_dir).n == 15


@pytest.mark.parametrize(
    ("sbp", "dbp", "risk", "expected"),
    [
        ([132.0] * 6, [78.0] * 6, False, snapshots.OUTCOME_CONTROLLED),  # target 135/85
        ([132.0] * 6, [78.0] * 6, True, snapshots.OUTCOME_UNCONTROLLED),  # target 130/80
        ([125.0] * 6, [86.0] * 6, False, snapshots.OUTCOME_UNCONTROLLED),  # DBP above 85
        ([120.0] * 5, [70.0] * 5, False, snapshots.OUTCOME_UNKNOWN),  # too few readings
        ([], [], False, snapshots.OUTCOME_UNKNOWN),
    ],
)
def test_outcome_of_when_window_readings_given_judges_control(
    sbp: list[float], dbp: list[float], risk: bool, expected: int
) -> None:
    assert snapshots.outcome_of(sbp, dbp, diabetes_or_ckd=risk) == expected


def test_build_from_decisions_when_outcome_window_passed_records_control(world: World) -> None:
    signed = NOW - timedelta(days=30)
    stored = store_decisions(world.session, world.users["clina"], n_patients=15, signed_at=signed)
    # Patient 0: readings 14-28 days after the decision, at 120/75 (controlled).
    add_cuff_readings(world, stored.patient_ids[0], start=signed + timedelta(days=15), days=7)
    snap = build(world)
    assert snap.label_counts["outcome_controlled"] == 1
    assert snap.label_counts["outcome_unknown"] == 14  # no readings: unknown, not uncontrolled
    # Before the window has passed, the same decision's outcome is unknown.
    early = build(world, now=signed + timedelta(days=20))
    assert early.label_counts["outcome_unknown"] == 15
    assert early.content_hash != snap.content_hash


def test_build_simulated_when_built_is_its_own_source_and_cohort(world: World) -> None:
    snap = snapshots.build_simulated(
        session=world.session,
        now=NOW,
        actor="test",
        data_dir=world.settings.data_dir,
        n_patients=20,
        days=35,
        seed=5,
        thresholds=Thresholds(min_rows=10, min_patients=10, min_holdout_patients=2),
    )
    assert (snap.cohort, snap.source) == ("simulated", snapshots.SOURCE_SIMULATED)
    assert snap.patients == 20
    data = snapshots.load(snap, data_dir=world.settings.data_dir)
    assert set(data.as_of.tolist()) == {""}
    assert not set(data.groups[data.holdout].tolist()) & set(data.groups[data.train].tolist())


def test_build_when_cohort_unknown_or_wrong_source_refuses(world: World) -> None:
    with pytest.raises(snapshots.UnknownCohort, match="known: clinic, simulated"):
        snapshots.source_of("team-a")
    with pytest.raises(snapshots.UnknownCohort):
        snapshots.build_from_decisions(
            session=world.session, now=NOW, cohort="simulated", actor="t", data_dir=Path(".")
        )


def test_decisions_since_when_snapshot_exists_counts_only_newer(world: World) -> None:
    store_decisions(world.session, world.users["clina"], n_patients=5, per_patient=2, signed_at=NOW)
    assert snapshots.decisions_since(world.session, since=None, now=NOW + timedelta(1)) == 10
    since = NOW - timedelta(days=1)
    assert snapshots.decisions_since(world.session, since=since, now=NOW + timedelta(1)) == 5


def test_build_when_rebuilt_with_other_thresholds_keeps_its_recorded_checks(
    world: World,
) -> None:
    store_decisions(world.session, world.users["clina"], n_patients=15, signed_at=NOW)
    first = build(world, now=NOW + timedelta(hours=1))
    world.session.commit()
    recorded = list(first.checks)
    strict = Thresholds(min_rows=500, min_patients=500, min_holdout_patients=50)
    again = build(world, now=NOW + timedelta(hours=2), thresholds=strict)
    assert again.id == first.id
    assert again.status == SnapshotStatus.VALID  # as built: snapshots never change
    assert again.checks == recorded
    assert not world.session.dirty
