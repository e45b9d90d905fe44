"""Two-person sign-off on promotion: an ML engineer and a clinical lead, different people,
each under an electronic signature (password re-entered, meaning stated, Ed25519 over the
signed record); append-only."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session
from sqlmodel import col

from app.auth.models import LoginAttempt, Role
from audit.models import AuditEntry
from mlops import lifecycle, registry
from mlops.models import ModelSignoff, ModelStatus, ModelVersion, SignoffRole
from tests.conftest import PASSWORD, World
from tests.mlops import gate_models

NOW = datetime(2030, 12, 2, 10, 30, tzinfo=UTC)
NAME = registry.TITRATION
ML, LEAD = SignoffRole.ML_ENGINEER, SignoffRole.CLINICAL_LEAD


@pytest.fixture
def validated(world: World, tmp_path: Path) -> ModelVersion:
    """A validated candidate, clina a clinical lead."""
    s = world.session
    world.users["clina"].is_clinical_lead = True
    s.add(world.users["clina"])
    version = gate_models.register(s, gate_models.trained().models["good"], tmp_path / "m")
    gate_models.passing_run(s, version)
    lifecycle.transition(
        session=s, name=NAME, version=version.version, to=ModelStatus.VALIDATED,
        actor="system:test", reason="gates passed", now=NOW,
    )  # fmt: skip
    s.commit()
    return version


@pytest.fixture
def sign(world: World, validated: ModelVersion) -> Callable[..., ModelSignoff]:
    """Sign the validated version as a user (defaults: the role's meaning, right password)."""

    def do(username: str, role: SignoffRole, **kw: object) -> ModelSignoff:
        args: dict[str, object] = {
            "session": world.session,
            "name": NAME,
            "version": validated.version,
            "signer": world.users[username],
            "role": role,
            "meaning": lifecycle.SIGNOFF_MEANINGS[role],
            "note": "reviewed the gate evidence",
            "now": NOW,
            "password": PASSWORD,
            "settings": world.settings,
        }
        args.update(kw)
        row = lifecycle.signoff(**args)  # type: ignore[arg-type]
        world.session.commit()
        return row

    return do


def test_signoff_when_both_roles_sign_is_ready_with_verified_signatures(
    world: World, validated: ModelVersion, sign: Callable[..., ModelSignoff]
) -> None:
    ml = sign("mleng", ML)
    lead = sign("clina", LEAD)
    assert lifecycle.ready_for_rollout(world.session, name=NAME, version=validated.version) == []
    key = lifecycle.signing_public_key(world.settings)
    for row, user in ((ml, "mleng"), (lead, "clina")):
        assert lifecycle.verify_signoff(row, validated, public_key=key)
        assert (row.signer_id, row.signer_name) == (
            world.users[user].id,
            world.users[user].full_name,
        )
        assert row.signed_at == NOW
    document = lifecycle.signoff_document(lead, validated)
    assert document["artifact_sha256"] == validated.artifact_sha256
    assert document["meaning"] == lifecycle.SIGNOFF_MEANINGS[LEAD]
    assert document["signed_at"] == "2030-12-02T10:30:00.000000Z"
    entries = world.session.scalars(
        select(AuditEntry).where(col(AuditEntry.action) == "model.signed")
    ).all()
    assert [json.loads(e.details)["role"] for e in entries] == ["ml_engineer", "clinical_lead"]
    assert all(json.loads(e.details)["reauthenticated"] for e in entries)


def test_verify_signoff_when_record_or_artifact_changed_fails(
    world: World, validated: ModelVersion, sign: Callable[..., ModelSignoff]
) -> None:
    row = sign("mleng", ML)
    key = lifecycle.signing_public_key(world.settings)
    row.note = "nothing to see"
    assert not lifecycle.verify_signoff(row, validated, public_key=key)
    world.session.rollback()
    validated.artifact_sha256 = "f" * 64  # the signature names the exact artifact
    assert not lifecycle.verify_signoff(row, validated, public_key=key)
    world.session.rollback()
    other = ModelSignoff(**{**row.model_dump(), "id": None, "version": 99})
    assert not lifecycle.verify_signoff(other, validated, public_key=key)


@pytest.mark.parametrize(
    ("username", "role"),
    [
        ("clinb", LEAD),  # a clinician who is not a clinical lead
        ("mleng", LEAD),
        ("clina", ML),
        ("auditor", ML),
        ("admin", LEAD),
        ("pa1", LEAD),
    ],
)
def test_signoff_when_role_does_not_fit_refused_403_and_nothing_signed(
    world: World, sign: Callable[..., ModelSignoff], username: str, role: SignoffRole
) -> None:
    with pytest.raises(lifecycle.SignoffRefused) as refused:
        sign(username, role)
    assert (refused.value.code, refused.value.status) == ("wrong_role", 403)
    world.session.rollback()
    assert world.session.scalars(select(ModelSignoff)).all() == []


def test_signoff_when_same_person_signs_both_roles_refused_same_signer(
    world: World, sign: Callable[..., ModelSignoff]
) -> None:
    sign("mleng", ML)
    # The engineer later becomes a clinical lead: still one person, so never both signatures.
    user = world.users["mleng"]
    user.role, user.is_clinical_lead = Role.CLINICIAN, True
    world.session.add(user)
    world.session.commit()
    with pytest.raises(lifecycle.SignoffRefused) as refused:
        sign("mleng", LEAD)
    assert (refused.value.code, refused.value.status) == ("same_signer", 409)


def test_signoff_when_role_already_signed_refused(
    world: World, sign: Callable[..., ModelSignoff]
) -> None:
    sign("clina", LEAD)
    world.users["clinb"].is_clinical_lead = True
    world.session.commit()
    with pytest.raises(lifecycle.SignoffRefused) as refused:
        sign("clinb", LEAD)
    assert refused.value.code == "already_signed"
    assert world.users["clina"].full_name in refused.value.detail


def test_signoff_when_password_wrong_refused_and_counts_toward_lockout(
    world: World, sign: Callable[..., ModelSignoff]
) -> None:
    with pytest.raises(lifecycle.SignoffRefused) as refused:
        sign("mleng", ML, password="not-the-password")
    assert (refused.value.code, refused.value.status) == ("signature_invalid", 403)
    world.session.commit()  # the caller keeps the failed attempt
    attempt = world.session.get(LoginAttempt, "mleng")
    assert attempt is not None
    assert attempt.failures == 1
    assert world.session.scalars(select(ModelSignoff)).all() == []


def test_signoff_when_meaning_not_the_roles_refused_422(
    world: World, sign: Callable[..., ModelSignoff]
) -> None:
    with pytest.raises(lifecycle.SignoffRefused) as refused:
        sign("mleng", ML, meaning=lifecycle.SIGNOFF_MEANINGS[LEAD])
    assert (refused.value.code, refused.value.status) == ("meaning_mismatch", 422)


def test_signoff_when_version_not_validated_refused(
    world: World, validated: ModelVersion, sign: Callable[..., ModelSignoff]
) -> None:
    lifecycle.transition(
        session=world.session, name=NAME, version=validated.version, to=ModelStatus.RETIRED,
        actor="system:test", reason="withdrawn", now=NOW,
    )  # fmt: skip
    world.session.commit()
    with pytest.raises(lifecycle.SignoffRefused) as refused:
        sign("mleng", ML)
    assert refused.value.code == "status_not_validated"


def test_signoff_when_disabled_account_refused(
    world: World, sign: Callable[..., ModelSignoff]
) -> None:
    world.users["mleng"].is_active = False
    world.session.commit()
    with pytest.raises(lifecycle.SignoffRefused) as refused:
        sign("mleng", ML)
    assert refused.value.code == "wrong_role"


def test_signoff_rows_when_changed_in_database_refused(
    db: Session, world: World, sign: Callable[..., ModelSignoff]
) -> None:
    sign("mleng", ML)
    with pytest.raises(DatabaseError):
        db.execute(update(ModelSignoff).values(note="edited"))
