"""The model registry's lifecycle: transitions with their history, the champion and
challenger aliases, which version served when, and the two-person sign-off on promotion.

Every change goes through `MODEL_TRANSITIONS` (mlops/models.py), is kept as an append-only
`ModelTransition` row (who, why, details) and is audited as `model.transition`. Promotion to
production needs a passing validation run (validation/gates.py) and two signatures by
different people: an ML engineer and a clinical lead, each under an electronic signature
(password re-entered, meaning stated, Ed25519 over the signed record; 21 CFR Part 11, as the
clinicians' decisions in loops/review). Services here never commit.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.auth import service as auth_service
from app.auth.models import Role, User
from app.core import clock
from app.core.config import Settings, get_settings
from audit import keys
from audit import service as audit
from audit.canonical import canonical_json
from mlops.models import (
    MODEL_TRANSITIONS,
    ModelAlias,
    ModelSignoff,
    ModelStatus,
    ModelTransition,
    ModelVersion,
    SignoffRole,
)
from validation.models import GateResult

CHAMPION: Final = "champion"
CHALLENGER: Final = "challenger"
ALIASES: Final = frozenset({CHAMPION, CHALLENGER})
# The gates a validation run must pass, all of them (validation/gates.py writes one
# GateResult per gate per run; a run missing one has not passed).
REQUIRED_GATES: Final[tuple[str, ...]] = (
    "artifact",
    "holdout_noninferiority",
    "calibration",
    "subgroup_gap",
    "safety_directional",
    "safety_invariance",
    "safety_routing",
    "safety_low_bp",
)
# What each signature means (21 CFR 11.50(a)(3)): shown to the signer, who states it back,
# and kept on the signed record with the printed name and the UTC time.
SIGNOFF_MEANINGS: Final[Mapping[SignoffRole, str]] = {
    SignoffRole.ML_ENGINEER: "approved for production as ML engineer: the validation evidence "
    "is complete and the model is technically fit for release",
    SignoffRole.CLINICAL_LEAD: "approved for production as clinical lead: the model is "
    "clinically acceptable for use with patients",
}
SIGNOFF_RECORD_TYPE: Final = "clinaiops.model-signoff/1"
# Where a version may be while it is still being approved; sign-offs are given on a
# validated version (after the gates, before the rollout starts).
_SIGNABLE: Final = frozenset({ModelStatus.VALIDATED})
_REFUSALS: Final = {
    auth_service.LoginOutcome.BAD_CREDENTIALS: "the password is wrong: nothing was signed",
    auth_service.LoginOutcome.THROTTLED: "too many wrong passwords: wait, then sign again",
    auth_service.LoginOutcome.LOCKED: "the account is locked after too many wrong passwords",
}


# ------------------------------------------------------------------ errors


class LifecycleRefused(Exception):
    """A lifecycle act refused: `code` says why, `status` is the HTTP answer."""

    status: int = 409

    def __init__(self, code: str, detail: str, status: int | None = None) -> None:
        self.code, self.detail = code, detail
        if status is not None:
            self.status = status
        super().__init__(f"{code}: {detail}")


class TransitionRefused(LifecycleRefused):
    """A transition (or alias change) the lifecycle does not allow now (409)."""


class SignoffRefused(LifecycleRefused):
    """A sign-off refused: wrong role (403), a bad signature (403), or a conflict (409)."""

    def __init__(
        self, code: str, detail: str, status: int = 409, retry_after: int | None = None
    ) -> None:
        super().__init__(code, detail, status)
        self.retry_after = retry_after


class ModelNotFound(LookupError):
    """No such model version."""


# ------------------------------------------------------------------ lookups


def label(name: str, version: int) -> str:
    """How audit entries name a model version, e.g. `titration:v3`."""
    return f"{name}:v{version}"


def get_version(session: Session, *, name: str, version: int, lock: bool = False) -> ModelVersion:
    """The version, optionally locked for this transaction; ModelNotFound when absent."""
    stmt = select(ModelVersion).where(
        col(ModelVersion.name) == name, col(ModelVersion.version) == version
    )
    if lock:
        stmt = stmt.with_for_update()
    found = session.scalars(stmt).first()
    if found is None:
        raise ModelNotFound(f"no model {label(name, version)}")
    return found


def aliases(session: Session, *, name: str) -> dict[str, int]:
    """The aliases of a model and the versions they point to."""
    rows = session.scalars(select(ModelAlias).where(col(ModelAlias.model_name) == name))
    return {a.alias: a.version for a in rows}


def champion(session: Session, *, name: str) -> ModelVersion | None:
    """The version serving patients: the champion alias's target while it is in production.

    A model registered before the aliases existed has no alias: the newest version in
    production is its champion. An alias pointing at a version no longer in production
    (retired without a successor) gives None, so serving stops rather than serve it."""
    alias = session.get(ModelAlias, (name, CHAMPION))
    if alias is None:
        stmt = (
            select(ModelVersion)
            .where(
                col(ModelVersion.name) == name,
                col(ModelVersion.status) == ModelStatus.PRODUCTION,
            )
            .order_by(col(ModelVersion.version).desc())
            .limit(1)
        )
        return session.scalars(stmt).first()
    found = session.scalars(
        select(ModelVersion).where(
            col(ModelVersion.name) == name, col(ModelVersion.version) == alias.version
        )
    ).first()
    if found is None or found.status != ModelStatus.PRODUCTION:
        return None
    return found


def transitions(
    session: Session, *, name: str, version: int | None = None
) -> list[ModelTransition]:
    """The lifecycle history of a model (or one version), oldest first."""
    stmt = select(ModelTransition).where(col(ModelTransition.model_name) == name)
    if version is not None:
        stmt = stmt.where(col(ModelTransition.version) == version)
    return list(session.scalars(stmt.order_by(col(ModelTransition.at), col(ModelTransition.id))))


def signoffs(session: Session, *, name: str, version: int) -> list[ModelSignoff]:
    """The sign-offs given on a version, oldest first."""
    stmt = (
        select(ModelSignoff)
        .where(col(ModelSignoff.model_name) == name, col(ModelSignoff.version) == version)
        .order_by(col(ModelSignoff.signed_at), col(ModelSignoff.id))
    )
    return list(session.scalars(stmt))


def gate_runs(session: Session, *, name: str, version: int) -> dict[str, list[GateResult]]:
    """Every validation run of a version: run id -> its gate results, newest run first."""
    stmt = (
        select(GateResult)
        .where(col(GateResult.model_name) == name, col(GateResult.version) == version)
        .order_by(col(GateResult.created_at).desc(), col(GateResult.id).desc())
    )
    runs: dict[str, list[GateResult]] = {}
    for result in session.scalars(stmt):
        runs.setdefault(result.run_id, []).append(result)
    for results in runs.values():
        results.sort(key=lambda r: r.id or 0)
    return runs


def run_passed(results: Sequence[GateResult]) -> bool:
    """True when a run holds every required gate and all of them passed (pure)."""
    passed = {r.gate for r in results if r.passed}
    return all(r.passed for r in results) and set(REQUIRED_GATES) <= passed


def gates_passed(session: Session, *, name: str, version: int) -> bool:
    """True when the newest validation run of the version passed every required gate."""
    runs = gate_runs(session, name=name, version=version)
    latest = next(iter(runs.values()), None)
    return latest is not None and run_passed(latest)


# ------------------------------------------------------------------ readiness


def missing_approvals(*, gates_ok: bool, signed: Sequence[tuple[str, int]]) -> list[str]:
    """What promotion still lacks, from the gate verdict and (role, signer id) pairs (pure)."""
    missing = [] if gates_ok else ["gates_not_passed"]
    roles = {role for role, _ in signed}
    if SignoffRole.ML_ENGINEER not in roles:
        missing.append("signoff_ml_engineer")
    if SignoffRole.CLINICAL_LEAD not in roles:
        missing.append("signoff_clinical_lead")
    if len(signed) > len({signer for _, signer in signed}):
        missing.append("same_signer")
    return missing


def _approvals(session: Session, version: ModelVersion) -> list[str]:
    signed = [
        (s.signoff_role, s.signer_id)
        for s in signoffs(session, name=version.name, version=version.version)
    ]
    ok = gates_passed(session, name=version.name, version=version.version)
    return missing_approvals(gates_ok=ok, signed=signed)


def ready_for_rollout(session: Session, *, name: str, version: int) -> list[str]:
    """What a version lacks before its rollout may start ([] when ready): it must be
    validated, its newest gate run passed, and signed by an ML engineer and a clinical lead
    who are two different people."""
    found = get_version(session, name=name, version=version)
    missing = [] if found.status == ModelStatus.VALIDATED else ["status_not_validated"]
    return missing + _approvals(session, found)


# ------------------------------------------------------------------ transitions


def actor_role(session: Session, actor: str) -> str:
    """The audit role of an actor name (`user:12`, `system:...`, `cli:...`)."""
    kind, _, ident = actor.partition(":")
    if kind == "user" and ident.isdigit():
        user = session.get(User, int(ident))
        return str(user.role) if user is not None else "unknown"
    return {"system": "system", "cli": "operator"}.get(kind, "system")


def _guard(session: Session, version: ModelVersion, to: ModelStatus) -> None:
    """Refuse a transition the model's evidence does not support (beyond the table)."""
    if to is ModelStatus.VALIDATED and not gates_passed(
        session, name=version.name, version=version.version
    ):
        raise TransitionRefused(
            "gates_not_passed", "the newest validation run has not passed every gate"
        )
    if to in {ModelStatus.SHADOW, ModelStatus.CANARY} or (
        to is ModelStatus.PRODUCTION and version.status == ModelStatus.CANARY
    ):
        missing = _approvals(session, version)
        if missing:
            raise TransitionRefused("not_approved", f"promotion needs: {', '.join(missing)}")
    if to is ModelStatus.PRODUCTION and version.status == ModelStatus.RETIRED:
        # A rollback may restore only a version that served before.
        served = session.scalars(
            select(col(ModelTransition.id)).where(
                col(ModelTransition.model_name) == version.name,
                col(ModelTransition.version) == version.version,
                (col(ModelTransition.to_status) == ModelStatus.PRODUCTION)
                | (col(ModelTransition.from_status) == ModelStatus.PRODUCTION),
            )
        ).first()
        if served is None:
            raise TransitionRefused(
                "never_served", "only a version that served in production may be restored"
            )


def transition(
    *,
    session: Session,
    name: str,
    version: int,
    to: ModelStatus | str,
    actor: str,
    reason: str,
    details: Mapping[str, Any] | None = None,
    now: datetime,
) -> ModelTransition:
    """Move a version to `to` through MODEL_TRANSITIONS, recording who and why.

    Beyond the table: validated needs a passing gate run; shadow, canary and canary ->
    production need the gates and both sign-offs; retired -> production (a rollback) only
    restores a version that served before. Refusals raise TransitionRefused (409)."""
    try:
        target = ModelStatus(to)
    except ValueError as exc:
        raise TransitionRefused("invalid_status", f"no lifecycle state {to!r}", 422) from exc
    reason = reason.strip()
    if not reason:
        raise TransitionRefused("reason_required", "say why the model changes state", 422)
    found = get_version(session, name=name, version=version, lock=True)
    current = ModelStatus(found.status)
    if target not in MODEL_TRANSITIONS[current]:
        raise TransitionRefused(
            "invalid_transition", f"{label(name, version)} is {current}: it cannot become {target}"
        )
    _guard(session, found, target)
    found.status = target
    session.add(found)
    row = ModelTransition(
        model_name=name,
        version=version,
        from_status=current,
        to_status=target,
        actor=actor,
        reason=reason[:1000],
        details=dict(details or {}),
        at=now,
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=actor,
        actor_role=actor_role(session, actor),
        action="model.transition",
        resource_type="model",
        resource_id=label(name, version),
        details={"from": str(current), "to": str(target), "transition_id": row.id},
    )
    return row


def record_registration(
    *,
    session: Session,
    version: ModelVersion,
    actor: str,
    now: datetime,
    reason: str = "registered",
) -> ModelTransition:
    """The first history row of a newly registered version (from nothing to its status).

    A version registered directly in production (`models train-initial`) also becomes the
    champion, and the production version it replaces is retired, so that exactly one
    version serves and the serving history says when each did."""
    row = ModelTransition(
        model_name=version.name,
        version=version.version,
        from_status=None,
        to_status=version.status,
        actor=actor,
        reason=reason[:1000],
        details={"artifact_sha256": version.artifact_sha256, "data_hash": version.data_hash},
        at=now,
    )
    session.add(row)
    session.flush()
    role = actor_role(session, actor)
    audit.record(
        session,
        actor=actor,
        actor_role=role,
        action="model.transition",
        resource_type="model",
        resource_id=label(version.name, version.version),
        details={"from": None, "to": str(version.status), "transition_id": row.id},
    )
    if version.status == ModelStatus.PRODUCTION:
        replaced = session.scalars(
            select(ModelVersion).where(
                col(ModelVersion.name) == version.name,
                col(ModelVersion.status) == ModelStatus.PRODUCTION,
                col(ModelVersion.version) != version.version,
            )
        ).all()
        for old in replaced:
            transition(
                session=session,
                name=old.name,
                version=old.version,
                to=ModelStatus.RETIRED,
                actor=actor,
                reason=f"replaced by {label(version.name, version.version)}, registered in "
                "production directly",
                now=now,
            )
        set_alias(
            session=session,
            name=version.name,
            alias=CHAMPION,
            version=version.version,
            actor=actor,
            now=now,
        )
    return row


def set_alias(
    *, session: Session, name: str, alias: str, version: int | None, actor: str, now: datetime
) -> ModelAlias | None:
    """Point `champion` or `challenger` at a version (None removes the alias); audited.

    The champion must be in production; the challenger must be on its way there
    (validated, shadow or canary)."""
    if alias not in ALIASES:
        raise TransitionRefused("invalid_alias", f"aliases are {sorted(ALIASES)}", 422)
    current = session.get(ModelAlias, (name, alias), with_for_update=True)
    before = current.version if current is not None else None
    if version is None:
        if current is not None:  # removing an absent alias changes nothing: no entry
            session.delete(current)
            session.flush()
            _audit_alias(session, name, alias, before, None, actor)
        return None
    target = get_version(session, name=name, version=version)
    allowed = (
        {ModelStatus.PRODUCTION}
        if alias == CHAMPION
        else {ModelStatus.VALIDATED, ModelStatus.SHADOW, ModelStatus.CANARY}
    )
    if target.status not in allowed:
        raise TransitionRefused(
            f"{alias}_status",
            f"{label(name, version)} is {target.status}: the {alias} must be "
            f"{' or '.join(sorted(allowed))}",
        )
    if current is None:
        current = ModelAlias(model_name=name, alias=alias, version=version, updated_by=actor)
    current.version, current.updated_by, current.updated_at = version, actor, now
    session.add(current)
    session.flush()
    _audit_alias(session, name, alias, before, version, actor)
    return current


def _audit_alias(
    session: Session, name: str, alias: str, before: int | None, after: int | None, actor: str
) -> None:
    audit.record(
        session,
        actor=actor,
        actor_role=actor_role(session, actor),
        action="model.alias",
        resource_type="model",
        resource_id=label(name, after if after is not None else before or 0),
        details={"alias": alias, "from": before, "to": after},
    )


# ------------------------------------------------------------------ serving history


@dataclass(frozen=True)
class ServingInterval:
    """One stretch of time a version served in production (`end` None: it still does)."""

    version: int
    start: datetime
    end: datetime | None
    started_by: str
    start_reason: str
    ended_by: str | None = None
    end_reason: str | None = None


def serving_intervals(
    rows: Sequence[ModelTransition], registered: Mapping[int, tuple[datetime, str]]
) -> list[ServingInterval]:
    """Production intervals from a model's transitions, oldest first (pure).

    `registered` maps each version to (created_at, created_by). A version that served
    before the lifecycle history existed (in production with no history row, or leaving
    production without having entered it in the history) served from its creation."""
    open_: dict[int, tuple[datetime, str, str]] = {}
    out: list[ServingInterval] = []
    legacy = "registered before the lifecycle history"
    for row in sorted(rows, key=lambda r: (r.at, r.id or 0)):
        if row.to_status == ModelStatus.PRODUCTION and row.version not in open_:
            open_[row.version] = (row.at, row.actor, row.reason)
        elif row.from_status == ModelStatus.PRODUCTION:
            if row.version in open_:
                start, by, why = open_.pop(row.version)
            elif row.version in registered:
                (start, by), why = registered[row.version], legacy
            else:
                continue
            out.append(ServingInterval(row.version, start, row.at, by, why, row.actor, row.reason))
    for version, (start, by, why) in open_.items():
        out.append(ServingInterval(version, start, None, by, why))
    return sorted(out, key=lambda i: (i.start, i.version))


def serving_history(session: Session, *, name: str) -> list[ServingInterval]:
    """Which version served when: production intervals from the transitions, oldest first."""
    rows = transitions(session, name=name)
    with_history = {r.version for r in rows}
    versions = list(session.scalars(select(ModelVersion).where(col(ModelVersion.name) == name)))
    registered = {v.version: (v.created_at, v.created_by) for v in versions}
    intervals = serving_intervals(rows, registered)
    for v in versions:
        if v.status == ModelStatus.PRODUCTION and v.version not in with_history:
            intervals.append(
                ServingInterval(
                    v.version,
                    v.created_at,
                    None,
                    v.created_by,
                    "registered before the lifecycle history",
                )
            )
    return sorted(intervals, key=lambda i: (i.start, i.version))


def served_at(intervals: Sequence[ServingInterval], at: datetime) -> int | None:
    """The version serving at a moment, from `serving_history` (pure)."""
    serving = [i for i in intervals if i.start <= at and (i.end is None or at < i.end)]
    return max(serving, key=lambda i: i.start).version if serving else None


# ------------------------------------------------------------------ sign-offs


def signoff_document(signoff: ModelSignoff, version: ModelVersion) -> dict[str, Any]:
    """The record a sign-off's signature covers: who, which exact artifact, meaning, when."""
    return {
        "type": SIGNOFF_RECORD_TYPE,
        "model_name": signoff.model_name,
        "version": signoff.version,
        "artifact_sha256": version.artifact_sha256,
        "data_hash": version.data_hash,
        "code_version": version.code_version,
        "signoff_role": signoff.signoff_role,
        "signer_user_id": signoff.signer_id,
        "signer_printed_name": signoff.signer_name,
        "meaning": signoff.meaning,
        "note": signoff.note,
        "signed_at": clock.iso(signoff.signed_at),
    }


def signoff_hash(document: Mapping[str, Any]) -> str:
    """SHA-256 (lowercase hex) of a sign-off record's canonical JSON."""
    return hashlib.sha256(canonical_json(dict(document))).hexdigest()


def sign_record(signoff: ModelSignoff, version: ModelVersion, key: Ed25519PrivateKey) -> None:
    """Fill in the record hash and the Ed25519 signature (hex) over that hash."""
    signoff.record_sha256 = signoff_hash(signoff_document(signoff, version))
    signoff.signature = key.sign(signoff.record_sha256.encode("ascii")).hex()


def verify_signoff(
    signoff: ModelSignoff, version: ModelVersion, *, public_key: Ed25519PublicKey
) -> bool:
    """True when the record hashes to its stored hash and the signature is the key's over it;
    False for any change to the sign-off or to the version's artifact or data hash."""
    expected = signoff_hash(signoff_document(signoff, version))
    if not hmac.compare_digest(expected, signoff.record_sha256 or ""):
        return False
    try:
        public_key.verify(bytes.fromhex(signoff.signature), expected.encode("ascii"))
    except (InvalidSignature, ValueError):
        return False
    return True


def signing_public_key(settings: Settings) -> Ed25519PublicKey:
    """The public half of the audit signing key, which signs the sign-offs."""
    assert settings.signing_key_path is not None
    return keys.load_signing_key(settings.signing_key_path).public_key()


def role_problem(signer: User, role: SignoffRole) -> str | None:
    """Why this user may not sign in this role, or None (pure)."""
    if not signer.is_active:
        return "the account is disabled"
    if role is SignoffRole.ML_ENGINEER and signer.role != Role.ML_ENGINEER:
        return "the ML engineer's sign-off needs the ml_engineer role"
    if role is SignoffRole.CLINICAL_LEAD and not (
        signer.role == Role.CLINICIAN and signer.is_clinical_lead
    ):
        return "the clinical sign-off needs a clinician who is a clinical lead"
    return None


def signoff(
    *,
    session: Session,
    name: str,
    version: int,
    signer: User,
    role: SignoffRole | str,
    meaning: str,
    note: str,
    now: datetime,
    password: str,
    settings: Settings | None = None,
) -> ModelSignoff:
    """Sign a validated version off for production under an electronic signature.

    In order: the role must fit the signer (403 `wrong_role`), the version must be validated
    (409 `status_not_validated`), the role not yet signed (409 `already_signed`) and the
    signer not the other signatory (409 `same_signer`), the meaning must be the role's
    (422 `meaning_mismatch`), then the password is checked (403 `signature_invalid`; a wrong
    one counts toward the sign-in lockout, so the caller commits it). The password is
    required: a signature is the signer's own act, re-authenticated each time (21 CFR
    11.200), never one made on their behalf."""
    settings = settings or get_settings()
    try:
        role = SignoffRole(role)
    except ValueError as exc:
        raise SignoffRefused("invalid_role", "ml_engineer or clinical_lead", 422) from exc
    problem = role_problem(signer, role)
    if problem is not None:
        raise SignoffRefused("wrong_role", problem, 403)
    found = get_version(session, name=name, version=version, lock=True)
    if found.status not in _SIGNABLE:
        raise SignoffRefused(
            "status_not_validated",
            f"{label(name, version)} is {found.status}: only a validated version is signed off",
        )
    given = signoffs(session, name=name, version=version)
    for other in given:
        if other.signoff_role == role:
            raise SignoffRefused(
                "already_signed", f"the {role} sign-off was given by {other.signer_name}"
            )
        if other.signer_id == signer.id:
            raise SignoffRefused(
                "same_signer", "the two sign-offs must come from two different people"
            )
    if " ".join(meaning.split()) != SIGNOFF_MEANINGS[role]:
        raise SignoffRefused(
            "meaning_mismatch",
            f"state the meaning of your signature: {SIGNOFF_MEANINGS[role]}",
            422,
        )
    result = auth_service.authenticate(
        session, username=signer.username, password=password, settings=settings
    )
    if result.outcome is not auth_service.LoginOutcome.OK or result.user is None:
        raise SignoffRefused(
            "signature_invalid",
            _REFUSALS.get(result.outcome, "refused"),
            403,
            result.retry_after,
        )
    row = ModelSignoff(
        model_name=name,
        version=version,
        signoff_role=role,
        signer_id=signer.id or 0,
        signer_name=signer.full_name,
        meaning=SIGNOFF_MEANINGS[role],
        note=note.strip()[:1000],
        record_sha256="",
        signature="",
        signed_at=now,
    )
    assert settings.signing_key_path is not None
    sign_record(row, found, keys.load_signing_key(settings.signing_key_path))
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=f"user:{signer.id}",
        actor_role=str(signer.role),
        action="model.signed",
        resource_type="model",
        resource_id=label(name, version),
        details={
            "role": str(role),
            "signoff_id": row.id,
            "record_sha256": row.record_sha256,
            "reauthenticated": True,  # always: the password is required
        },
    )
    return row
