"""The registry lifecycle: transitions through the table with their history and audit,
guards on promotion, the champion and challenger aliases, and the serving history."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core import clock
from audit.models import AuditEntry
from mlops import lifecycle, registry
from mlops.models import ModelAlias, ModelStatus, ModelTransition, ModelVersion, SignoffRole
from tests.conftest import PASSWORD, World
from tests.mlops import gate_models

T0 = datetime(2030, 12, 1, 9, 0, tzinfo=UTC)  # after any registration time of a test
NAME = registry.TITRATION


@pytest.fixture
def lead(world: World) -> World:
    """The world with clina as a clinical lead."""
    world.users["clina"].is_clinical_lead = True
    world.session.add(world.users["clina"])
    world.session.commit()
    return world


@pytest.fixture
def put(db: Session, tmp_path: Path) -> Callable[..., ModelVersion]:
    """Register the champion model's artifact as a new version."""

    def add(status: ModelStatus = ModelStatus.CANDIDATE, parent: int | None = None) -> ModelVersion:
        model = gate_models.trained().models["champion"]
        version = gate_models.register(db, model, tmp_path / "models", status=status, parent=parent)
        db.commit()
        return version

    return add


def _approve(world: World, version: ModelVersion) -> None:
    """A passing gate run and both sign-offs on a candidate, leaving it validated."""
    s = world.session
    gate_models.passing_run(s, version)
    lifecycle.transition(
        session=s, name=NAME, version=version.version, to=ModelStatus.VALIDATED,
        actor="user:1", reason="gates passed", now=T0,
    )  # fmt: skip
    for username, role in (
        ("mleng", SignoffRole.ML_ENGINEER),
        ("clina", SignoffRole.CLINICAL_LEAD),
    ):
        lifecycle.signoff(
            session=s, name=NAME, version=version.version, signer=world.users[username],
            role=role, meaning=lifecycle.SIGNOFF_MEANINGS[role], note="", now=T0,
            password=PASSWORD, settings=world.settings,
        )  # fmt: skip
    s.commit()


def _move(s: Session, version: int, to: ModelStatus, at: datetime, why: str = "test") -> None:
    lifecycle.transition(
        session=s, name=NAME, version=version, to=to, actor="system:rollout", reason=why, now=at
    )


def test_transition_when_allowed_writes_history_row_and_audit_entry(
    lead: World, put: Callable[..., ModelVersion]
) -> None:
    v = put()
    gate_models.passing_run(lead.session, v)
    row = lifecycle.transition(
        session=lead.session,
        name=NAME,
        version=v.version,
        to=ModelStatus.VALIDATED,
        actor=f"user:{lead.users['mleng'].id}",
        reason="every validation gate passed",
        details={"run_id": "run-1"},
        now=T0,
    )
    lead.session.commit()
    assert (row.from_status, row.to_status, row.reason) == (
        "candidate",
        "validated",
        "every validation gate passed",
    )
    lead.session.refresh(v)
    assert v.status == ModelStatus.VALIDATED
    registered, entry = lead.session.scalars(
        select(AuditEntry)
        .where(col(AuditEntry.action) == "model.transition")
        .order_by(col(AuditEntry.seq))
    ).all()
    assert json.loads(registered.details)["from"] is None  # the registration's own row
    assert (entry.actor_role, entry.resource_id) == ("ml_engineer", "titration:v1")
    assert json.loads(entry.details)["from"] == "candidate"
    assert json.loads(entry.details)["to"] == "validated"


@pytest.mark.parametrize(
    ("start", "to", "code"),
    [
        (ModelStatus.CANDIDATE, ModelStatus.PRODUCTION, "invalid_transition"),
        (ModelStatus.CANDIDATE, ModelStatus.SHADOW, "invalid_transition"),
        (ModelStatus.CANDIDATE, ModelStatus.VALIDATED, "gates_not_passed"),
        (ModelStatus.PRODUCTION, ModelStatus.CANARY, "invalid_transition"),
    ],
)
def test_transition_when_not_allowed_refused_with_code_and_nothing_written(
    world: World, put: Callable[..., ModelVersion], start: ModelStatus, to: ModelStatus, code: str
) -> None:
    v = put(status=start)
    before = world.session.scalars(select(ModelTransition)).all()
    with pytest.raises(lifecycle.TransitionRefused) as refused:
        _move(world.session, v.version, to, T0)
    assert (refused.value.code, refused.value.status) == (code, 409)
    world.session.rollback()
    world.session.refresh(v)
    assert v.status == start
    assert world.session.scalars(select(ModelTransition)).all() == before


def test_transition_when_reason_blank_or_status_unknown_refused_422(
    world: World, put: Callable[..., ModelVersion]
) -> None:
    v = put()
    for to, reason, code in (
        ("validated", "  ", "reason_required"),
        ("live", "x", "invalid_status"),
    ):
        with pytest.raises(lifecycle.TransitionRefused) as refused:
            lifecycle.transition(
                session=world.session, name=NAME, version=v.version, to=to, actor="system:x",
                reason=reason, now=T0,
            )  # fmt: skip
        assert (refused.value.code, refused.value.status) == (code, 422)


def test_transition_when_version_unknown_raises_not_found(world: World) -> None:
    with pytest.raises(lifecycle.ModelNotFound):
        _move(world.session, 99, ModelStatus.RETIRED, T0)


def test_transition_to_shadow_when_signoffs_missing_refused_not_approved(
    lead: World, put: Callable[..., ModelVersion]
) -> None:
    v = put()
    gate_models.passing_run(lead.session, v)
    _move(lead.session, v.version, ModelStatus.VALIDATED, T0)
    with pytest.raises(lifecycle.TransitionRefused) as refused:
        _move(lead.session, v.version, ModelStatus.SHADOW, T0)
    assert refused.value.code == "not_approved"
    assert "signoff_ml_engineer" in refused.value.detail
    assert "signoff_clinical_lead" in refused.value.detail


def test_ready_for_rollout_lists_what_is_missing_until_gates_and_both_signoffs(
    lead: World, put: Callable[..., ModelVersion]
) -> None:
    v = put()
    assert lifecycle.ready_for_rollout(lead.session, name=NAME, version=v.version) == [
        "status_not_validated",
        "gates_not_passed",
        "signoff_ml_engineer",
        "signoff_clinical_lead",
    ]
    _approve(lead, v)
    assert lifecycle.ready_for_rollout(lead.session, name=NAME, version=v.version) == []


def test_register_in_production_makes_champion_writes_history_and_retires_previous(
    world: World, put: Callable[..., ModelVersion]
) -> None:
    v1 = put(status=ModelStatus.PRODUCTION)
    assert lifecycle.aliases(world.session, name=NAME) == {"champion": 1}
    v2 = put(status=ModelStatus.PRODUCTION)
    world.session.refresh(v1)
    assert (v1.status, v2.status) == (ModelStatus.RETIRED, ModelStatus.PRODUCTION)
    assert registry.production(world.session) == v2
    assert lifecycle.champion(world.session, name=NAME) == v2
    history = [
        (t.version, t.from_status, t.to_status)
        for t in lifecycle.transitions(world.session, name=NAME)
    ]
    assert history == [
        (1, None, "production"),
        (2, None, "production"),
        (1, "production", "retired"),
    ]
    intervals = lifecycle.serving_history(world.session, name=NAME)
    assert [(i.version, i.end is None) for i in intervals] == [(1, False), (2, True)]


def test_champion_when_no_alias_is_newest_production_version(db: Session, tmp_path: Path) -> None:
    # Rows as a database from before the lifecycle history holds them: no alias, no history.
    for version, status in (
        (1, ModelStatus.PRODUCTION),
        (2, ModelStatus.PRODUCTION),
        (3, "candidate"),
    ):
        db.add(
            ModelVersion(
                name=NAME, version=version, status=status, artifact_path="x",
                artifact_sha256="0" * 64, data_hash="0" * 64, code_version="c",
                feature_names=[], params={}, metrics={}, privacy={}, created_by="legacy",
                created_at=T0 + timedelta(days=version),
            )
        )  # fmt: skip
    db.commit()
    champ = lifecycle.champion(db, name=NAME)
    assert champ is not None
    assert champ.version == 2
    assert [(i.version, i.end) for i in lifecycle.serving_history(db, name=NAME)] == [
        (1, None),
        (2, None),
    ]


def test_champion_when_alias_points_at_retired_version_is_none(
    world: World, put: Callable[..., ModelVersion]
) -> None:
    v = put(status=ModelStatus.PRODUCTION)
    _move(world.session, v.version, ModelStatus.RETIRED, T0, "withdrawn")
    world.session.commit()
    assert lifecycle.champion(world.session, name=NAME) is None
    assert registry.production(world.session) is None  # serving stops: clinicians decide


@pytest.mark.parametrize(
    ("alias", "status", "code"),
    [
        ("champion", ModelStatus.CANDIDATE, "champion_status"),
        ("challenger", ModelStatus.PRODUCTION, "challenger_status"),
        ("favourite", ModelStatus.PRODUCTION, "invalid_alias"),
    ],
)
def test_set_alias_when_version_in_wrong_state_refused(
    world: World, put: Callable[..., ModelVersion], alias: str, status: ModelStatus, code: str
) -> None:
    v = put(status=status)
    with pytest.raises(lifecycle.TransitionRefused) as refused:
        lifecycle.set_alias(
            session=world.session, name=NAME, alias=alias, version=v.version, actor="system:x",
            now=T0,
        )  # fmt: skip
    assert refused.value.code == code


def test_set_alias_moves_and_clears_with_audit(
    lead: World, put: Callable[..., ModelVersion]
) -> None:
    v = put()
    _approve(lead, v)
    s = lead.session
    lifecycle.set_alias(
        session=s, name=NAME, alias="challenger", version=v.version, actor="system:x", now=T0
    )
    assert lifecycle.aliases(s, name=NAME) == {"challenger": 1}
    for _ in range(2):  # removing it again changes nothing and writes no entry
        lifecycle.set_alias(
            session=s, name=NAME, alias="challenger", version=None, actor="system:x", now=T0
        )
    s.commit()
    assert s.scalars(select(ModelAlias)).all() == []
    entries = s.scalars(select(AuditEntry).where(col(AuditEntry.action) == "model.alias")).all()
    moves = [json.loads(e.details) for e in entries]
    assert [(m["from"], m["to"]) for m in moves] == [(None, 1), (1, None)]


def test_promotion_and_rollback_when_done_give_serving_history_with_who_and_why(
    lead: World, put: Callable[..., ModelVersion]
) -> None:
    s = lead.session
    v1 = put(status=ModelStatus.PRODUCTION)
    v2 = put(parent=v1.version)
    _approve(lead, v2)
    _move(s, 2, ModelStatus.SHADOW, T0 + timedelta(hours=1))
    _move(s, 2, ModelStatus.CANARY, T0 + timedelta(hours=2))
    _move(s, 2, ModelStatus.PRODUCTION, T0 + timedelta(hours=3), "canary clean at 100%")
    _move(s, 1, ModelStatus.RETIRED, T0 + timedelta(hours=3), "replaced by v2")
    lifecycle.set_alias(session=s, name=NAME, alias="champion", version=2, actor="system:x", now=T0)
    s.commit()
    assert registry.production(s).version == 2  # type: ignore[union-attr]
    # The rollback: v2 retired, v1 restored.
    _move(s, 2, ModelStatus.RETIRED, T0 + timedelta(hours=5), "override rate breach")
    _move(s, 1, ModelStatus.PRODUCTION, T0 + timedelta(hours=5), "restored by rollback")
    lifecycle.set_alias(session=s, name=NAME, alias="champion", version=1, actor="system:x", now=T0)
    s.commit()
    intervals = lifecycle.serving_history(s, name=NAME)
    assert [(i.version, i.end_reason) for i in intervals] == [
        (1, "replaced by v2"),
        (2, "override rate breach"),
        (1, None),
    ]
    assert intervals[2].start_reason == "restored by rollback"
    assert lifecycle.served_at(intervals, T0 + timedelta(hours=4)) == 2
    assert lifecycle.served_at(intervals, T0 + timedelta(hours=6)) == 1
    assert lifecycle.served_at(intervals, clock.utcnow() - timedelta(days=3650)) is None


def test_restore_when_version_never_served_refused(
    lead: World, put: Callable[..., ModelVersion]
) -> None:
    v = put()
    _move(lead.session, v.version, ModelStatus.RETIRED, T0, "abandoned")
    with pytest.raises(lifecycle.TransitionRefused) as refused:
        _move(lead.session, v.version, ModelStatus.PRODUCTION, T0)
    assert refused.value.code == "never_served"


def _row(version: int, frm: str | None, to: str, hour: int, n: int) -> ModelTransition:
    return ModelTransition(
        id=n, model_name=NAME, version=version, from_status=frm, to_status=to, actor="a",
        reason=f"r{n}", at=T0 + timedelta(hours=hour),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([], []),
        ([_row(1, None, "production", 0, 1)], [(1, 0, None)]),
        (
            [_row(1, None, "production", 0, 1), _row(1, "production", "retired", 2, 2)],
            [(1, 0, 2)],
        ),
        # Left production without entering it in the history: served from its creation.
        ([_row(1, "production", "retired", 3, 1)], [(1, -1, 3)]),
        (
            [
                _row(2, "canary", "production", 1, 1),
                _row(2, "production", "retired", 4, 2),
                _row(1, "retired", "production", 4, 3),
            ],
            [(2, 1, 4), (1, 4, None)],
        ),
        ([_row(3, "candidate", "validated", 1, 1)], []),
    ],
)
def test_serving_intervals_from_transitions(
    rows: list[ModelTransition], expected: list[tuple[int, int, int | None]]
) -> None:
    registered = {v: (T0 - timedelta(hours=1), "legacy") for v in (1, 2, 3)}
    got = [
        (
            i.version,
            round((i.start - T0).total_seconds() / 3600),
            None if i.end is None else round((i.end - T0).total_seconds() / 3600),
        )
        for i in lifecycle.serving_intervals(rows, registered)
    ]
    assert got == expected


@pytest.mark.parametrize(
    ("gates_ok", "signed", "missing"),
    [
        (True, [("ml_engineer", 1), ("clinical_lead", 2)], []),
        (False, [("ml_engineer", 1), ("clinical_lead", 2)], ["gates_not_passed"]),
        (True, [("ml_engineer", 1)], ["signoff_clinical_lead"]),
        (True, [], ["signoff_ml_engineer", "signoff_clinical_lead"]),
        (True, [("ml_engineer", 1), ("clinical_lead", 1)], ["same_signer"]),
    ],
)
def test_missing_approvals_table(
    gates_ok: bool, signed: list[tuple[str, int]], missing: list[str]
) -> None:
    assert lifecycle.missing_approvals(gates_ok=gates_ok, signed=signed) == missing


def test_run_passed_needs_every_required_gate_passed() -> None:
    from validation.models import GateResult

    def results(passed: dict[str, bool]) -> list[GateResult]:
        return [
            GateResult(model_name=NAME, version=1, gate=g, passed=p, run_id="r", created_by="t",
                       created_at=T0)
            for g, p in passed.items()
        ]  # fmt: skip

    every = dict.fromkeys(lifecycle.REQUIRED_GATES, True)
    assert lifecycle.run_passed(results(every))
    assert not lifecycle.run_passed(results({**every, "calibration": False}))
    assert not lifecycle.run_passed(results({g: True for g in lifecycle.REQUIRED_GATES[:-1]}))


def test_train_initial_when_done_sets_champion_and_first_history_row(
    db: Session, tmp_path: Path
) -> None:
    import warnings

    from mlops.training import InitialTraining, train_initial

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        version = train_initial(
            db,
            models_dir=tmp_path / "models",
            created_by="cli:ops",
            config=InitialTraining(n_patients=40, days=42, epochs=3, batch_size=32),
        )
    db.commit()
    assert lifecycle.aliases(db, name=NAME) == {"champion": version.version}
    (row,) = lifecycle.transitions(db, name=NAME)
    assert (row.from_status, row.to_status, row.actor) == (None, "production", "cli:ops")
    entry = db.scalars(select(AuditEntry).where(col(AuditEntry.action) == "model.transition")).one()
    assert entry.actor_role == "operator"
