"""A model registry with a history, for the model card, privacy budget and change-control
report tests, arranged by hand (no DP training): v1 registered straight to production on the
simulated cohort; a training snapshot of clinician decisions and a DP candidate v2 trained on
it (its ledger entry charged to the `clinic` cohort); a validation run of every gate with
evidence files (verdicts computed by the gates' own pure functions on a small synthetic
holdout); two sign-offs; v2 moved through shadow and canary to production, v1 retired."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from app.auth import service as auth_service
from app.auth.models import Role, User
from mlops import ledger, lifecycle, registry
from mlops.features import FEATURE_NAMES, FEATURE_SET_VERSION
from mlops.models import (
    ModelStatus,
    ModelVersion,
    PrivacySpend,
    SignoffRole,
    TrainingSnapshot,
)
from reports.models import Period
from tests.conftest import PASSWORD, World
from tests.mlops.rollout_setup import titration_model
from validation import gates
from validation.models import GateResult

NAME = "titration"
# A Monday: weeks in the monitoring report start on Mondays.
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
LABEL_COUNTS = {"decrease": 24, "hold": 98, "increase": 38}


def at(days: float) -> datetime:
    """T0 plus some days."""
    return T0 + timedelta(days=days)


def period(start_days: float, end_days: float) -> Period:
    """A period from T0 + start to T0 + end (days)."""
    return Period(at(start_days), at(end_days))


def v1_fields() -> dict[str, Any]:
    """What `models train-initial` records on v1 (the shapes of mlops/training.py)."""
    dp = {
        "n": 239.0,
        "accuracy": 0.8703,
        "macro_f1": 0.6611,
        "nll": 0.3902,
        "ece": 0.0351,
        "recall_decrease": 0.5,
        "recall_hold": 0.95,
        "recall_increase": 0.4815,
    }
    return {
        "params": {
            "n_patients": 120,
            "days": 70,
            "seed": 7,
            "every": 7,
            "scenario": "None",
            "overtreated_share": 0.1,
            "training": {"seed": 7, "epochs": 30, "target_epsilon": 3.0},
            "labels": "protocol v1",
            "feature_set": FEATURE_SET_VERSION,
        },
        "metrics": {
            "holdout_rows": 239,
            "train_rows": 575,
            "calibration_rows": 144,
            "temperature": 1.12,
            "direction_constrained": {"dp": [], "non_dp_baseline": ["hypotension_symptoms_3d"]},
            "dp": dp,
            "non_dp_baseline": {**dp, "accuracy": 0.8787},
        },
        "privacy": {
            "private": True,
            "trainer": "opacus-dp-sgd",
            "privacy_unit": "row",
            "epsilon": 2.9871,
            "delta": 0.000173913,
            "target_epsilon": 3.0,
            "accountant": "rdp",
            "noise_multiplier": 1.0537,
            "max_grad_norm": 1.0,
            "sample_rate": 0.1111,
            "steps": 270,
            "epochs": 30,
            "poisson_sampling": True,
            "secure_mode": False,
            "scales_from_training_data": True,
        },
    }


def v2_fields(snapshot: TrainingSnapshot) -> dict[str, Any]:
    """What a retraining run records on its candidate (the shapes of mlops/retrain.py)."""
    dp = {
        "n": 40.0,
        "accuracy": 0.725,
        "macro_f1": 0.6412,
        "nll": 0.6833,
        "ece": 0.0712,
        "recall_decrease": 0.6667,
        "recall_hold": 0.8,
        "recall_increase": 0.5556,
    }
    return {
        "params": {
            "training": {"epochs": 30, "seed": "secret: drawn per run, not recorded"},
            "labels": "clinician decisions",
            "feature_set": FEATURE_SET_VERSION,
            "snapshot": {"id": snapshot.id, "content_hash": snapshot.content_hash},
            "reason": "retraining due: 160 new clinician decisions",
        },
        "metrics": {
            "holdout_rows": 40,
            "train_rows": 96,
            "calibration_rows": 24,
            "holdout_patients": 40,
            "temperature": 0.97,
            "direction_constrained": {"dp": ["hypotension_symptoms_3d"], "non_dp_baseline": []},
            "dp": dp,
            "non_dp_baseline": {**dp, "accuracy": 0.75, "macro_f1": 0.7},
            "privacy_cost": {"accuracy": 0.025, "macro_f1": 0.0588},
            "subgroups": {
                "dp": {
                    "sex": {
                        "female": {**dp, "n": 22.0, "accuracy": 0.7273},
                        "male": {**dp, "n": 18.0, "accuracy": 0.7222},
                    },
                    "age_band": {"<50": {"n": 4, "insufficient": True}},
                    "diabetes_or_ckd": {"yes": {**dp, "n": 12.0, "accuracy": 0.6667}},
                }
            },
            "label_counts": LABEL_COUNTS,
        },
        "privacy": {
            "private": True,
            "trainer": "opacus-dp-sgd",
            "epsilon": 2.9533,
            "delta": 0.00104167,
            "target_epsilon": 3.0,
            "accountant": "rdp",
            "noise_multiplier": 0.9124,
            "max_grad_norm": 1.0,
            "sample_rate": 0.6667,
            "steps": 45,
            "epochs": 30,
            "poisson_sampling": True,
            "privacy_unit": "patient",
            "rows_per_patient_max": 1,
            "patient_epsilon": 2.9533,
            "patient_delta": 0.00104167,
            "secure_mode": False,
            "secure_mode_reason": "Opacus secure_mode needs torchcsprng",
            "scales": "public (mlops.retrain.PUBLIC_SCALES)",
            "not_covered": ["calibration temperature", "holdout metrics and subgroup metrics"],
            "cohort": "clinic",
            "ledger": {
                "composition": ledger.COMPOSITION,
                "budget_epsilon": 10.0,
                "spent_epsilon_before": 0.0,
                "spent_epsilon_after": 2.9533,
            },
        },
    }


def register(
    world: World,
    directory: Path,
    *,
    status: ModelStatus,
    fields: dict[str, Any],
    created_at: datetime,
    created_by: str,
    data_hash: str,
    parent: int | None = None,
    push: float = 2.0,
) -> ModelVersion:
    """Save an artifact and register a version (commits)."""
    directory.mkdir(parents=True, exist_ok=True)
    model = titration_model(push)
    path = directory / f"model-{uuid.uuid4().hex[:8]}.json"
    sha = model.save(path)
    version = registry.register(
        world.session,
        name=NAME,
        artifact_path=path,
        artifact_sha256=sha,
        data_hash=data_hash,
        feature_names=model.feature_names,
        created_by=created_by,
        status=status,
        parent_version=parent,
        now=created_at,
        **fields,
    )
    version.created_at = created_at  # registration stamps the wall clock; the story is dated
    world.session.commit()
    return version


def snapshot(world: World, when: datetime) -> TrainingSnapshot:
    """A stored training snapshot of clinician decisions (its file is never read here)."""
    row = TrainingSnapshot(
        content_hash=uuid.uuid4().hex + uuid.uuid4().hex,
        cohort="clinic",
        source="clinician_decisions",
        feature_set=FEATURE_SET_VERSION,
        rows=160,
        patients=160,
        train_patients=120,
        holdout_patients=40,
        label_counts=LABEL_COUNTS,
        status="valid",
        checks=[
            {"name": "min_rows", "passed": True, "measured": 160, "threshold": 100, "detail": ""},
            {
                "name": "label_balance",
                "passed": True,
                "measured": {},
                "threshold": 0.01,
                "detail": "",
            },
        ],
        path="snapshots/clinic.npz",
        file_sha256="e" * 64,
        window_start=when - timedelta(days=90),
        window_end=when,
        created_by="system:scheduler",
        created_at=when,
    )
    world.session.add(row)
    world.session.commit()
    return row


def spend(
    world: World,
    *,
    version: int | None,
    snapshot_id: int | None,
    epsilon: float,
    delta: float,
    when: datetime,
    cohort: str = "clinic",
) -> PrivacySpend:
    """One ledger entry as a retraining run writes it (commits)."""
    row = ledger.record(
        world.session,
        cohort=cohort,
        snapshot_id=snapshot_id,
        model_name=NAME,
        model_version=version,
        epsilon=epsilon,
        delta=delta,
        accountant="rdp",
        details={
            "row_epsilon": epsilon,
            "row_delta": delta,
            "rows_per_patient_max": 1,
            "privacy_unit": "patient",
            "target_epsilon": 3.0,
            "noise_multiplier": 0.9124,
            "sample_rate": 0.6667,
            "steps": 45,
            "max_grad_norm": 1.0,
            "budget_epsilon": 10.0,
        },
        created_by=f"user:{world.users['mleng'].id}",
        now=when,
    )
    world.session.commit()
    return row


def verdicts(*, fail_calibration: bool = False) -> list[gates.Verdict]:
    """Every gate's verdict, from the gates' own functions on a small synthetic holdout."""
    rng = np.random.default_rng(5)
    n = 300
    names = list(FEATURE_NAMES)
    X = np.zeros((n, len(names)))
    X[:, names.index("sex_female")] = np.arange(n) % 2
    X[:, names.index("sex_male")] = 1 - np.arange(n) % 2
    X[:, names.index("age_band")] = np.where(np.arange(n) < 200, 3.0, 4.0)
    X[:, names.index("cuff_sbp_mean_7d")] = rng.normal(140.0, 10.0, n)
    model = titration_model()
    proba = model.predict_proba(X)
    # Labels drawn from the model's own probabilities: calibrated, and better than no skill.
    y = np.array([rng.choice(3, p=p) for p in proba])
    if fail_calibration:
        proba = np.tile([0.98, 0.01, 0.01], (n, 1))
    groups = np.arange(n) // 3
    t = gates.Thresholds(bootstrap=200)
    return [
        gates.artifact_verdict(load_error=None, feature_problem=None),
        gates.noninferiority(
            proba, gates.no_skill_proba(y), y, groups, t, comparator_name="champion v1"
        ),
        gates.calibration(proba, y, t),
        gates.subgroup_gap(proba, y, gates.subgroup_masks(X, names), t),
        gates.directional(model, X[:10]),
        gates.Verdict(
            "safety_invariance",
            True,
            {
                "forbidden_inputs": [],
                "largest_change": {"reading_order": 0.0, "later_readings": 0.0},
                "cases": 168,
                "sex_swap_reported_not_gated": {
                    "largest_change": 0.0412,
                    "changed_proposals": 3,
                    "rows": 1008,
                },
            },
            {"largest_change_at_most": 0.0, "perturbations": dict(gates.PERTURBATIONS)},
            "no identity or device inputs; 4 irrelevant changes moved no probability",
        ),
        gates.Verdict(
            "safety_routing",
            True,
            {"cases": 840, "auto_deliverable": 0, "by_kind": {}, "totals": {}},
            {"auto_deliverable_at_most": 0, "envelope": "demo (policies.envelope.default_rules)"},
            "none of 840 crisis and low-BP cases auto-deliverable",
        ),
        gates.low_bp_no_increase(np.tile([0.6, 0.3, 0.1], (5, 1)), np.empty((0, 3))),
    ]


def gate_run(
    world: World,
    version: ModelVersion,
    when: datetime,
    *,
    fail_calibration: bool = False,
    champion: int | None = 1,
) -> list[GateResult]:
    """Store a validation run as `gates.run_gates` stores it: one result per gate, each with
    its evidence file under the data directory; a passing run validates the candidate."""
    run_id = str(uuid.uuid4())
    folder = Path(gates.GATE_DIR) / f"{NAME}-v{version.version}" / run_id
    results = []
    for verdict in verdicts(fail_calibration=fail_calibration):
        relative = folder / f"{verdict.gate}.json"
        sha = gates.write_evidence(
            world.settings.data_dir,
            relative,
            {"gate": verdict.gate, "measured": verdict.measured, "detail": verdict.detail},
        )
        result = GateResult(
            model_name=NAME,
            version=version.version,
            gate=verdict.gate,
            passed=verdict.passed,
            champion_version=champion,
            measured=gates._jsonable(verdict.measured),
            threshold=gates._jsonable(verdict.threshold),
            detail=verdict.detail,
            evidence_path=relative.as_posix(),
            evidence_sha256=sha,
            run_id=run_id,
            created_by=f"user:{world.users['mleng'].id}",
            created_at=when,
        )
        world.session.add(result)
        results.append(result)
    world.session.flush()
    if lifecycle.run_passed(results):
        lifecycle.transition(
            session=world.session,
            name=NAME,
            version=version.version,
            to=ModelStatus.VALIDATED,
            actor=f"user:{world.users['mleng'].id}",
            reason="every validation gate passed",
            details={"run_id": run_id},
            now=when,
        )
    world.session.commit()
    return results


def lead(world: World) -> User:
    """The clinical lead (created once)."""
    found = world.users.get("lead")
    if found is None:
        found = world.users["lead"] = auth_service.create_user(
            world.session,
            username="lead",
            password=PASSWORD,
            full_name="Dr Clinical Lead",
            role=Role.CLINICIAN,
            settings=world.settings,
            is_clinical_lead=True,
        )
        world.session.commit()
    return found


def sign(world: World, version: ModelVersion, when: datetime) -> None:
    """Both sign-offs: the ML engineer at `when`, the clinical lead an hour later."""
    signers = ((world.users["mleng"], SignoffRole.ML_ENGINEER), (lead(world), "clinical_lead"))
    for k, (signer, role) in enumerate(signers):
        lifecycle.signoff(
            session=world.session,
            name=NAME,
            version=version.version,
            signer=signer,
            role=role,
            meaning=lifecycle.SIGNOFF_MEANINGS[SignoffRole(role)],
            note="read the evidence" if k else "",
            now=when + timedelta(hours=k),
            password=PASSWORD,
            settings=world.settings,
        )
    world.session.commit()


def move(world: World, version: int, to: ModelStatus, when: datetime, reason: str) -> None:
    """One lifecycle transition by the rollout (commits)."""
    lifecycle.transition(
        session=world.session,
        name=NAME,
        version=version,
        to=to,
        actor="system:rollout",
        reason=reason,
        now=when,
    )
    world.session.commit()


@dataclass
class History:
    """What `arrange` stored."""

    v1: ModelVersion
    v2: ModelVersion
    snapshot: TrainingSnapshot
    spend: PrivacySpend
    run: list[GateResult]


def arrange(world: World, tmp_path: Path) -> History:
    """v1 in production from T0; v2 trained (day 1), validated (day 2), signed off (day 3),
    shadow (day 4), canary (day 5), production with v1 retired (day 6)."""
    models = tmp_path / "models"
    v1 = register(
        world,
        models,
        status=ModelStatus.PRODUCTION,
        fields=v1_fields(),
        created_at=T0,
        created_by="cli:ops",
        data_hash="0aa480fe01a3c34187b0484a51d978d12848b77307e3bb443f2817720198a71a",
    )
    snap = snapshot(world, at(1))
    v2 = register(
        world,
        models,
        status=ModelStatus.CANDIDATE,
        fields=v2_fields(snap),
        created_at=at(1),
        created_by=f"user:{world.users['mleng'].id}",
        data_hash=snap.content_hash,
        parent=1,
    )
    charged = spend(
        world, version=2, snapshot_id=snap.id, epsilon=2.9533, delta=0.00104167, when=at(1)
    )
    run = gate_run(world, v2, at(2))
    sign(world, v2, at(3))
    move(world, 2, ModelStatus.SHADOW, at(4), "rollout 1 started: shadow beside titration:v1")
    move(world, 2, ModelStatus.CANARY, at(5), "rollout 1: shadow clean for the dwell")
    move(world, 2, ModelStatus.PRODUCTION, at(6), "rollout 1 completed")
    move(world, 1, ModelStatus.RETIRED, at(6), "replaced by titration:v2 (rollout 1)")
    lifecycle.set_alias(
        session=world.session, name=NAME, alias="champion", version=2, actor="system", now=at(6)
    )
    world.session.commit()
    for row in (v1, v2):
        world.session.refresh(row)
    world.session.commit()  # end the read: on SQLite a transaction holds the single writer
    return History(v1, v2, snap, charged, run)


def cells(report: Any) -> list[str]:
    """Every string a report shows: summary, facts, notes and table cells."""
    out = [v for pair in report.summary for v in pair]
    for s in report.sections:
        out.append(s.heading)
        out += [v for pair in s.facts for v in pair]
        out += list(s.notes)
        if s.table is not None:
            out += list(s.table.columns)
            out += [c for row in s.table.rows for c in row]
    return out


def section(report: Any, heading: str) -> Any:
    """The report's section with this heading."""
    (found,) = [s for s in report.sections if s.heading == heading]
    return found


def facts(report: Any, heading: str) -> dict[str, str]:
    """A section's facts as a dict."""
    return dict(section(report, heading).facts)


def rows(report: Any, heading: str) -> list[dict[str, str]]:
    """A section's table rows as dicts by column."""
    table = section(report, heading).table
    if table is None:
        return []
    return [dict(zip(table.columns, row, strict=True)) for row in table.rows]
