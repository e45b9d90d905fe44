"""Training snapshots: frozen sets of features and labels, named by the hash of their content.

A snapshot of **clinician decisions** (source `clinician_decisions`, cohort `clinic`) takes
each signed decision's feature snapshot (what the model saw when it proposed) and the action
the clinician chose (`Decision.label_action`: the approved action, or the direction of the
step a clinician modified to, or hold for a rejection) as the label. Only decisions whose
stored features still hash to their recorded `feature_hash` under this code's feature set are
used: that proves the row is what the model saw, and drops rows of an older feature set.
At most `max_rows_per_patient` decisions per patient are kept (the newest): at 1 the DP
guarantee of a model trained on it covers a whole patient (docs/privacy.md).

The **outcome** of each decision is recorded beside its label, as it arrives: blood pressure
control 14 to 28 days after the decision, from the patient's accepted validated-cuff readings
in that window (at least `OUTCOME_MIN_READINGS`; controlled when the mean SBP and DBP are both
below the patient's target, 135/85 or 130/80 with diabetes or CKD). Until the window has
passed, or with too few readings, it is unknown (-1). The outcome is part of the content (a
snapshot rebuilt after outcomes arrived is another snapshot) but is not a training label:
it is kept so that decisions can be judged by what followed them.

A snapshot of **simulated** data (source `simulated`, cohort `simulated`) holds the
protocol-labelled cohort of `mlops.dataset`, for when too few real labels exist; it is a
separate source and cohort, never mixed with patients' rows.

Rows are put in a canonical order and hashed (`content_hash`): the same data give the same
id whoever builds it. The file (an `.npz` written byte-for-byte deterministically, arrays
only, no pickle) lives under the data directory and is checked by its SHA-256 when read.
Patients appear in it only as a hash of their id (a pseudonym, not anonymisation).
The train/holdout split is by patient, from that hash: a patient is never on both sides.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import math
import zipfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core import clock
from device_ingest.models import Reading, ReadingStatus
from loops.protocol import target
from loops.review.models import Decision
from mlops import dataset
from mlops.features import FEATURE_NAMES, FEATURE_SET_VERSION, FeatureVector
from mlops.model import CLASSES, index_of
from mlops.models import ModelVersion, SnapshotStatus, TrainingSnapshot
from policies.envelope import TitrationAction
from validation import data_checks

FORMAT: Final = "clinaiops-snapshot/1"
SOURCE_DECISIONS: Final = "clinician_decisions"
SOURCE_SIMULATED: Final = "simulated"
# Each cohort is one population and draws one source; the privacy budget is per cohort, so a
# population must not be reachable under two names (a rename would get a fresh budget).
COHORTS: Final[dict[str, str]] = {"clinic": SOURCE_DECISIONS, "simulated": SOURCE_SIMULATED}
HOLDOUT_SHARE: Final = 0.25
_SPLIT_SALT: Final = "clinaiops-split/1"
_GROUP_SALT: Final = "clinaiops-patient/1"
DEFAULT_MAX_ROWS_PER_PATIENT: Final = 1
# Blood-pressure control after a decision: the window, and the readings it needs.
OUTCOME_FROM: Final = timedelta(days=14)
OUTCOME_TO: Final = timedelta(days=28)
OUTCOME_MIN_READINGS: Final = 6
OUTCOME_CONTROLLED, OUTCOME_UNCONTROLLED, OUTCOME_UNKNOWN = 1, 0, -1
SUBDIR: Final = "snapshots"
_ZIP_TIME: Final = (1980, 1, 1, 0, 0, 0)  # fixed: the same arrays give the same file bytes


class UnknownCohort(ValueError):
    """A cohort name this code does not define."""


class SnapshotFileError(Exception):
    """A snapshot's file is missing, changed, or does not hold what its row says."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def source_of(cohort: str) -> str:
    """The data source a cohort draws from; refuses unknown cohorts."""
    try:
        return COHORTS[cohort]
    except KeyError:
        raise UnknownCohort(
            f"unknown cohort {cohort!r}; known: {', '.join(sorted(COHORTS))}"
        ) from None


def patient_group(patient_id: str) -> str:
    """The pseudonym a patient has in snapshot files: a salted SHA-256 of their id."""
    return hashlib.sha256(f"{_GROUP_SALT}:{patient_id}".encode()).hexdigest()[:32]


def hash_fraction(group: str, salt: str) -> float:
    """A patient's uniform position in [0, 1), fixed by its pseudonym and a salt."""
    digest = hashlib.sha256(f"{salt}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def holdout_mask(groups: np.ndarray, share: float = HOLDOUT_SHARE) -> np.ndarray:
    """Rows of holdout patients: decided per patient from its pseudonym, never per row."""
    chosen = {g: hash_fraction(g, _SPLIT_SALT) < share for g in set(np.asarray(groups).tolist())}
    return np.array([chosen[g] for g in np.asarray(groups).tolist()], dtype=bool)


def outcome_of(sbp: Sequence[float], dbp: Sequence[float], *, diabetes_or_ckd: bool) -> int:
    """Blood-pressure control from the readings of the outcome window (pure)."""
    if len(sbp) < OUTCOME_MIN_READINGS or len(sbp) != len(dbp):
        return OUTCOME_UNKNOWN
    goal_sbp, goal_dbp = target(diabetes_or_ckd)
    controlled = math.fsum(sbp) / len(sbp) < goal_sbp and math.fsum(dbp) / len(dbp) < goal_dbp
    return OUTCOME_CONTROLLED if controlled else OUTCOME_UNCONTROLLED


def _canonical_float(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if value == 0.0:
        return "0.0"
    return repr(float(value))


@dataclass(frozen=True)
class SnapshotData:
    """A snapshot's rows, in canonical order, and the patient-level split."""

    source: str
    feature_names: tuple[str, ...]
    X: np.ndarray  # float64 [n, d]; NaN = missing
    y: np.ndarray  # int64 [n]: index into mlops.model.CLASSES
    groups: np.ndarray  # patient pseudonyms (str)
    as_of: np.ndarray  # when each row's features were taken (ISO UTC; "" when simulated)
    outcome: np.ndarray  # int8 [n]: 1 controlled, 0 not, -1 unknown
    feature_set: str = FEATURE_SET_VERSION
    holdout_share: float = HOLDOUT_SHARE
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def holdout(self) -> np.ndarray:
        """Mask of holdout rows (by patient)."""
        return holdout_mask(self.groups, self.holdout_share)

    @property
    def train(self) -> np.ndarray:
        """Mask of training rows: every row of every other patient."""
        return ~self.holdout

    @property
    def n(self) -> int:
        """Rows."""
        return int(self.y.shape[0])

    def max_rows_per_patient(self, mask: np.ndarray | None = None) -> int:
        """The most rows any one patient has (in `mask`, default all rows)."""
        groups = self.groups if mask is None else self.groups[mask]
        if groups.size == 0:
            return 0
        return int(np.unique(groups, return_counts=True)[1].max())

    def lines(self, *, outcomes: bool = True) -> list[str]:
        """One canonical text line per row (the content hash covers these, sorted)."""
        out = []
        for i in range(self.n):
            values = ",".join(_canonical_float(v) for v in self.X[i].tolist())
            outcome = int(self.outcome[i]) if outcomes else OUTCOME_UNKNOWN
            out.append(f"{self.groups[i]}\t{self.as_of[i]}\t{int(self.y[i])}\t{outcome}\t{values}")
        return out

    def training_hash(self) -> str:
        """The content hash as if no outcome were known: what training reads (features,
        labels, patients) without what it does not, so a snapshot that differs from another
        only by outcomes that arrived since trains the same model."""
        return self.content_hash(outcomes=False)

    def content_hash(self, *, outcomes: bool = True) -> str:
        """SHA-256 over a header and the sorted row lines: the same data, the same id."""
        digest = hashlib.sha256()
        header = [
            FORMAT,
            f"source={self.source}",
            f"feature_set={self.feature_set}",
            f"features={','.join(self.feature_names)}",
            f"labels={','.join(str(a) for a in CLASSES)}",
            f"holdout_share={self.holdout_share!r}",
        ]
        digest.update(("\n".join(header) + "\n").encode())
        for line in sorted(self.lines(outcomes=outcomes)):
            digest.update((line + "\n").encode())
        return digest.hexdigest()

    def canonical(self) -> SnapshotData:
        """The same rows in canonical (sorted-line) order."""
        order = sorted(range(self.n), key=self.lines().__getitem__)
        idx = np.asarray(order, dtype=np.int64)
        return SnapshotData(
            source=self.source,
            feature_names=self.feature_names,
            X=self.X[idx] if self.n else self.X,
            y=self.y[idx] if self.n else self.y,
            groups=self.groups[idx] if self.n else self.groups,
            as_of=self.as_of[idx] if self.n else self.as_of,
            outcome=self.outcome[idx] if self.n else self.outcome,
            feature_set=self.feature_set,
            holdout_share=self.holdout_share,
            meta=self.meta,
        )

    def table(self) -> data_checks.Table:
        """The view the data checks take."""
        return data_checks.Table(
            feature_names=self.feature_names,
            feature_set=self.feature_set,
            X=self.X,
            y=self.y,
            groups=self.groups,
            holdout=self.holdout,
        )

    def label_counts(self) -> dict[str, int]:
        """Rows per action, and decisions per known or unknown outcome."""
        counts = {str(a): int(np.count_nonzero(self.y == i)) for i, a in enumerate(CLASSES)}
        counts["outcome_controlled"] = int(np.count_nonzero(self.outcome == OUTCOME_CONTROLLED))
        counts["outcome_uncontrolled"] = int(np.count_nonzero(self.outcome == OUTCOME_UNCONTROLLED))
        counts["outcome_unknown"] = int(np.count_nonzero(self.outcome == OUTCOME_UNKNOWN))
        return counts


def _empty(source: str, meta: dict[str, Any] | None = None) -> SnapshotData:
    return SnapshotData(
        source=source,
        feature_names=FEATURE_NAMES,
        X=np.empty((0, len(FEATURE_NAMES))),
        y=np.empty(0, dtype=np.int64),
        groups=np.empty(0, dtype="<U32"),
        as_of=np.empty(0, dtype="<U32"),
        outcome=np.empty(0, dtype=np.int8),
        meta=meta or {},
    )


# ------------------------------------------------------------------ the file


def _file_bytes(data: SnapshotData, content_hash: str) -> bytes:
    """An .npz (numpy's zip of .npy arrays) with fixed timestamps and no pickled objects."""
    meta = {
        **data.meta,
        "format": FORMAT,
        "source": data.source,
        "feature_set": data.feature_set,
        "holdout_share": data.holdout_share,
        "content_hash": content_hash,
    }
    arrays: dict[str, np.ndarray] = {
        "X": np.ascontiguousarray(data.X, dtype=np.float64),
        "y": np.ascontiguousarray(data.y, dtype=np.int64),
        "groups": np.asarray(data.groups, dtype="<U64"),
        "as_of": np.asarray(data.as_of, dtype="<U32"),
        "outcome": np.ascontiguousarray(data.outcome, dtype=np.int8),
        "feature_names": np.asarray(data.feature_names, dtype="<U64"),
        "meta": np.asarray(json.dumps(meta, sort_keys=True, separators=(",", ":"))),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            payload = io.BytesIO()
            np.lib.format.write_array(payload, arrays[name], allow_pickle=False)
            archive.writestr(info, payload.getvalue())
    return buffer.getvalue()


def _write(data_dir: Path, relpath: str, payload: bytes) -> None:
    path = data_dir / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    tmp.replace(path)  # a reader never sees half a file


def _parse(payload: bytes) -> SnapshotData:
    with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
        return SnapshotData(
            source=str(meta["source"]),
            feature_names=tuple(str(n) for n in npz["feature_names"].tolist()),
            X=np.asarray(npz["X"], dtype=np.float64),
            y=np.asarray(npz["y"], dtype=np.int64),
            groups=np.asarray(npz["groups"]),
            as_of=np.asarray(npz["as_of"]),
            outcome=np.asarray(npz["outcome"], dtype=np.int8),
            feature_set=str(meta["feature_set"]),
            holdout_share=float(meta["holdout_share"]),
            meta=meta,
        )


def load(snapshot: TrainingSnapshot, *, data_dir: Path) -> SnapshotData:
    """A snapshot's rows, read from its file and refused unless the file's SHA-256 and the
    rows' content hash are the ones its row records."""
    path = data_dir / snapshot.path
    try:
        payload = path.read_bytes()
    except FileNotFoundError:
        raise SnapshotFileError(
            "snapshot_file_missing", f"snapshot {snapshot.id}: its file is missing"
        ) from None
    actual = hashlib.sha256(payload).hexdigest()
    if not hmac.compare_digest(actual, snapshot.file_sha256):
        raise SnapshotFileError(
            "snapshot_file_changed",
            f"snapshot {snapshot.id}: file SHA-256 {actual[:12]}..., recorded "
            f"{snapshot.file_sha256[:12]}...: refusing to read it",
        )
    try:
        data = _parse(payload)
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
        raise SnapshotFileError(
            "snapshot_file_invalid", f"snapshot {snapshot.id}: unreadable file"
        ) from exc
    if data.content_hash() != snapshot.content_hash:
        raise SnapshotFileError(
            "snapshot_content_mismatch",
            f"snapshot {snapshot.id}: its rows do not hash to its content hash",
        )
    return data


# ------------------------------------------------------------------ building


@dataclass(frozen=True)
class _Labelled:
    decision_id: str
    patient_id: str
    signed_at: datetime
    features: np.ndarray
    label: int


def _vector(features: dict[str, Any]) -> np.ndarray | None:
    """The stored feature dict as a vector in this code's order; None if another set."""
    if set(features) != set(FEATURE_NAMES):
        return None
    values = [features[n] for n in FEATURE_NAMES]
    if any(v is not None and not isinstance(v, int | float) for v in values):
        return None
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def _hash_matches(vector: np.ndarray, feature_hash: str) -> bool:
    fv = FeatureVector(
        values=tuple(float(v) for v in vector.tolist()),
        cuff_readings_per_day_7d=(0,) * 7,  # not covered by the hash
        days_since_last_change=None,
    )
    return hmac.compare_digest(fv.hash(), feature_hash)


def _outcomes(session: Session, rows: Sequence[_Labelled], *, now: datetime) -> dict[str, int]:
    """Each decision's blood-pressure control 14-28 days after it (see the module docstring)."""
    by_patient: dict[str, list[_Labelled]] = defaultdict(list)
    for row in rows:
        if row.signed_at + OUTCOME_TO <= now:  # only complete windows can be judged
            by_patient[row.patient_id].append(row)
    diab = FEATURE_NAMES.index("diabetes")
    ckd = FEATURE_NAMES.index("ckd")
    out: dict[str, int] = {}
    for patient_id, mine in by_patient.items():
        start = min(r.signed_at for r in mine) + OUTCOME_FROM
        end = max(r.signed_at for r in mine) + OUTCOME_TO
        readings = session.execute(
            select(
                col(Reading.effective_start), col(Reading.systolic), col(Reading.diastolic)
            ).where(
                col(Reading.patient_id) == patient_id,
                col(Reading.kind) == "blood_pressure",
                col(Reading.device_class) == "validated_cuff",
                col(Reading.status) == ReadingStatus.ACCEPTED,
                col(Reading.effective_start) >= start,
                col(Reading.effective_start) < end,
            )
        ).all()
        for row in mine:
            lo, hi = row.signed_at + OUTCOME_FROM, row.signed_at + OUTCOME_TO
            window = [
                (s, d) for t, s, d in readings if lo <= t < hi and s is not None and d is not None
            ]
            out[row.decision_id] = outcome_of(
                [s for s, _ in window],
                [d for _, d in window],
                diabetes_or_ckd=bool(row.features[diab] == 1.0 or row.features[ckd] == 1.0),
            )
    return out


def build_from_decisions(
    *,
    session: Session,
    now: datetime,
    cohort: str = "clinic",
    actor: str,
    data_dir: Path,
    max_rows_per_patient: int = DEFAULT_MAX_ROWS_PER_PATIENT,
    thresholds: data_checks.Thresholds | None = None,
) -> TrainingSnapshot:
    """Snapshot the signed clinician decisions before `now` (the newest
    `max_rows_per_patient` per patient), run the data checks, and store it (or find the
    stored snapshot of the same content). Flushes; the caller commits."""
    if source_of(cohort) != SOURCE_DECISIONS:
        raise UnknownCohort(f"cohort {cohort!r} does not hold clinician decisions")
    if max_rows_per_patient < 1:
        raise ValueError("max_rows_per_patient must be at least 1")
    stored = session.execute(
        select(
            col(Decision.id),
            col(Decision.patient_id),
            col(Decision.signed_at),
            col(Decision.features),
            col(Decision.feature_hash),
            col(Decision.label_action),
        )
        .where(col(Decision.signed_at) < now)
        .order_by(col(Decision.patient_id), col(Decision.signed_at).desc(), col(Decision.id))
    ).all()
    kept: list[_Labelled] = []
    other_set = over_cap = bad_label = 0
    per_patient: dict[str, int] = defaultdict(int)
    for decision_id, patient_id, signed_at, features, feature_hash, label in stored:
        vector = _vector(dict(features or {}))
        if vector is None or not _hash_matches(vector, feature_hash):
            other_set += 1
            continue
        try:
            y = index_of(TitrationAction(label))
        except ValueError:
            bad_label += 1
            continue
        if per_patient[patient_id] >= max_rows_per_patient:
            over_cap += 1
            continue
        per_patient[patient_id] += 1
        kept.append(_Labelled(decision_id, patient_id, signed_at, vector, y))
    outcomes = _outcomes(session, kept, now=now)
    selection = {
        "decisions": len(stored),
        "kept": len(kept),
        "other_feature_set": other_set,
        "unknown_label": bad_label,
        "over_patient_cap": over_cap,
    }
    meta = {"max_rows_per_patient": max_rows_per_patient, "selection": selection}
    if kept:
        data = SnapshotData(
            source=SOURCE_DECISIONS,
            feature_names=FEATURE_NAMES,
            X=np.vstack([r.features for r in kept]),
            y=np.array([r.label for r in kept], dtype=np.int64),
            groups=np.array([patient_group(r.patient_id) for r in kept], dtype="<U32"),
            as_of=np.array([clock.iso(r.signed_at) for r in kept], dtype="<U32"),
            outcome=np.array(
                [outcomes.get(r.decision_id, OUTCOME_UNKNOWN) for r in kept], dtype=np.int8
            ),
            meta=meta,
        )
    else:
        data = _empty(SOURCE_DECISIONS, meta)
    selection_check = data_checks.CheckResult(
        name="row_selection",
        passed=True,  # informative: which decisions became rows, and why others did not
        measured=selection,
        threshold={"max_rows_per_patient": max_rows_per_patient},
        detail=(
            f"{len(kept)} of {len(stored)} decisions kept; {other_set} of another feature set "
            f"or not matching their feature hash, {over_cap} beyond {max_rows_per_patient} per "
            f"patient (the newest are kept)"
        ),
    )
    window = (
        (min(r.signed_at for r in kept), max(r.signed_at for r in kept)) if kept else (None, None)
    )
    return _store(
        session,
        data=data,
        cohort=cohort,
        actor=actor,
        now=now,
        data_dir=data_dir,
        thresholds=thresholds,
        window=window,
        extra_checks=[selection_check],
    )


def build_simulated(
    *,
    session: Session,
    now: datetime,
    actor: str,
    data_dir: Path,
    cohort: str = "simulated",
    n_patients: int = 200,
    days: int = 84,
    seed: int = 7,
    thresholds: data_checks.Thresholds | None = None,
) -> TrainingSnapshot:
    """Snapshot a simulated protocol-labelled cohort (mlops.dataset): no real patient in it.
    Flushes; the caller commits."""
    if source_of(cohort) != SOURCE_SIMULATED:
        raise UnknownCohort(f"cohort {cohort!r} does not hold simulated data")
    built = dataset.build(n_patients=n_patients, days=days, seed=seed)
    meta = {"simulation": {k: str(v) for k, v in built.params.items()}, "max_rows_per_patient": 0}
    data = SnapshotData(
        source=SOURCE_SIMULATED,
        feature_names=built.feature_names,
        X=np.asarray(built.X, dtype=np.float64),
        y=np.asarray(built.y, dtype=np.int64),
        groups=np.array([patient_group(str(g)) for g in built.groups], dtype="<U32"),
        as_of=np.full(len(built.y), "", dtype="<U32"),
        outcome=np.full(len(built.y), OUTCOME_UNKNOWN, dtype=np.int8),
        meta=meta,
    )
    info = data_checks.CheckResult(
        name="row_selection",
        passed=True,
        measured={"simulated_patients": n_patients, "rows": data.n},
        threshold={"max_rows_per_patient": None},
        detail=f"simulated cohort of {n_patients} patients over {days} days (seed {seed}), "
        "labelled by the written protocol; every row kept",
    )
    return _store(
        session,
        data=data,
        cohort=cohort,
        actor=actor,
        now=now,
        data_dir=data_dir,
        thresholds=thresholds,
        window=(None, None),
        extra_checks=[info],
    )


def run_checks(
    data: SnapshotData, thresholds: data_checks.Thresholds | None = None
) -> list[data_checks.CheckResult]:
    """The data checks on a snapshot's rows (pure)."""
    return data_checks.run_checks(data.table(), thresholds or data_checks.Thresholds())


def _store(
    session: Session,
    *,
    data: SnapshotData,
    cohort: str,
    actor: str,
    now: datetime,
    data_dir: Path,
    thresholds: data_checks.Thresholds | None,
    window: tuple[datetime | None, datetime | None],
    extra_checks: list[data_checks.CheckResult],
) -> TrainingSnapshot:
    data = data.canonical()
    content_hash = data.content_hash()
    payload = _file_bytes(data, content_hash)
    file_sha = hashlib.sha256(payload).hexdigest()
    relpath = f"{SUBDIR}/{content_hash}.npz"
    existing = session.scalars(
        select(TrainingSnapshot).where(col(TrainingSnapshot.content_hash) == content_hash)
    ).first()
    if existing is not None:
        # The same content again (nothing new): the stored snapshot, its file restored if it
        # went missing (the bytes are deterministic), refused if it was changed.
        path = data_dir / existing.path
        if not path.exists() and existing.file_sha256 == file_sha:
            _write(data_dir, existing.path, payload)
        load(existing, data_dir=data_dir)
        return existing  # as built: a snapshot and its recorded checks never change
    _write(data_dir, relpath, payload)
    results = run_checks(data, thresholds)
    holdout = data.holdout
    snapshot = TrainingSnapshot(
        content_hash=content_hash,
        cohort=cohort,
        source=data.source,
        feature_set=data.feature_set,
        rows=data.n,
        patients=len(set(data.groups.tolist())),
        train_patients=len(set(data.groups[~holdout].tolist())),
        holdout_patients=len(set(data.groups[holdout].tolist())),
        label_counts=data.label_counts(),
        status=SnapshotStatus.INVALID if data_checks.failed(results) else SnapshotStatus.VALID,
        checks=[c.as_dict() for c in [*extra_checks, *results]],
        path=relpath,
        file_sha256=file_sha,
        window_start=window[0],
        window_end=window[1],
        created_by=actor,
        created_at=now,
    )
    session.add(snapshot)
    session.flush()
    return snapshot


# ------------------------------------------------------------------ reading


def latest(session: Session, *, cohort: str) -> TrainingSnapshot | None:
    """The newest snapshot of a cohort, valid or not."""
    return session.scalars(
        select(TrainingSnapshot)
        .where(col(TrainingSnapshot.cohort) == cohort)
        .order_by(col(TrainingSnapshot.created_at).desc(), col(TrainingSnapshot.id).desc())
        .limit(1)
    ).first()


def listing(
    session: Session, *, limit: int = 20, before_id: int | None = None, cohort: str | None = None
) -> list[TrainingSnapshot]:
    """Snapshots, newest first (by id), a page at a time."""
    stmt = select(TrainingSnapshot).order_by(col(TrainingSnapshot.id).desc()).limit(limit)
    if before_id is not None:
        stmt = stmt.where(col(TrainingSnapshot.id) < before_id)
    if cohort is not None:
        stmt = stmt.where(col(TrainingSnapshot.cohort) == cohort)
    return list(session.scalars(stmt).all())


def last_trained(session: Session, *, cohort: str) -> TrainingSnapshot | None:
    """The snapshot of a cohort that most recently trained a registered version."""
    return session.scalars(
        select(TrainingSnapshot)
        .join(ModelVersion, col(ModelVersion.data_hash) == col(TrainingSnapshot.content_hash))
        .where(col(TrainingSnapshot.cohort) == cohort)
        .order_by(col(ModelVersion.id).desc())
        .limit(1)
    ).first()


def decisions_since(session: Session, *, since: datetime | None, now: datetime) -> int:
    """Clinician decisions signed after `since` (all when None) and before `now`."""
    stmt = select(func.count()).select_from(Decision).where(col(Decision.signed_at) < now)
    if since is not None:
        stmt = stmt.where(col(Decision.signed_at) > since)
    return int(session.scalar(stmt) or 0)
