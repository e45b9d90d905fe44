"""Claims on queued proposals, signed clinician decisions, and manual alert escalations."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.db import UTCDateTime, new_id


class DecisionKind(StrEnum):
    """What a clinician decided about a proposal."""

    APPROVE = "approve"
    MODIFY = "modify"
    REJECT = "reject"


# The meaning of each signature (21 CFR 11.50(a)(3)), shown with the signer's printed name
# and the UTC time on the record and on every printout.
MEANINGS: dict[DecisionKind, str] = {
    DecisionKind.APPROVE: "approved as prescriber",
    DecisionKind.MODIFY: "modified as prescriber",
    DecisionKind.REJECT: "rejected as reviewing clinician",
}


class RejectReason(StrEnum):
    """Why a proposal was rejected (mandatory on a rejection)."""

    INSUFFICIENT_DATA = "insufficient_data"
    CLINICAL_JUDGEMENT = "clinical_judgement"
    PATIENT_PREFERENCE = "patient_preference"
    ADVERSE_EFFECT = "adverse_effect"
    OTHER = "other"


class ModifyReason(StrEnum):
    """Why a clinician chose another step than the proposed one."""

    CLINICAL_JUDGEMENT = "clinical_judgement"
    PATIENT_PREFERENCE = "patient_preference"
    ADVERSE_EFFECT = "adverse_effect"
    RECENT_READINGS = "recent_readings"
    OTHER = "other"


class ReviewClaim(SQLModel, table=True):
    """A clinician's lock on a queued proposal; it lapses at `expires_at`."""

    __tablename__ = "review_claims"

    proposal_id: str = Field(foreign_key="proposals.id", primary_key=True, max_length=36)
    user_id: int = Field(foreign_key="users.id")
    claimed_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)


class Decision(SQLModel, table=True):
    """A clinician's signed decision on one proposal, with the label snapshot for retraining.

    Never updated: the signature covers `record_hash`, the SHA-256 of the decided record
    (`loops.review.signing.record_document`), so a changed field or a signature moved to
    another record no longer verifies.
    """

    __tablename__ = "decisions"
    __table_args__ = (
        UniqueConstraint("proposal_id", name="uq_decisions_proposal"),  # one per proposal
        Index("ix_decisions_patient_signed", "patient_id", "signed_at"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    proposal_id: str = Field(foreign_key="proposals.id", max_length=36)
    patient_id: str = Field(foreign_key="patients.id", max_length=36)
    user_id: int = Field(foreign_key="users.id")
    kind: str = Field(max_length=16)  # a DecisionKind
    # Ladder steps and doses: where the patient was, what the model proposed, what was decided
    # (a rejection decides the current step).
    from_step: int
    proposed_step: int
    decided_step: int
    from_dose: float
    proposed_dose: float
    decided_dose: float
    reason_code: str | None = Field(default=None, max_length=32)
    reason_text: str = Field(default="", max_length=2000)
    # The feedback label: what the model saw and said, and the action the clinician chose.
    feature_hash: str = Field(max_length=64)
    features: dict[str, Any] = Field(sa_type=JSON)
    model_version: str = Field(max_length=64)
    proposal_action: str = Field(max_length=16)
    probabilities: dict[str, float] = Field(sa_type=JSON)
    confidence: float
    label_action: str = Field(max_length=16)
    # The electronic signature's manifestation (21 CFR 11.50) and its binding (11.70).
    signer_user_id: int = Field(foreign_key="users.id")
    signer_printed_name: str = Field(max_length=200)
    signer_username: str = Field(max_length=64)
    meaning: str = Field(max_length=64)
    signed_at: datetime = Field(sa_type=UTCDateTime)
    record_hash: str = Field(max_length=64)
    signature: str = Field(max_length=128)
    key_id: str = Field(max_length=64)  # SHA-256 of the signing public key (raw bytes)


class AlertEscalation(SQLModel, table=True):
    """A clinician passing an alert on (to a colleague, a senior, the emergency pathway)."""

    __tablename__ = "alert_escalations"
    __table_args__ = (Index("ix_alert_escalations_alert", "alert_id", "escalated_at"),)

    id: int | None = Field(default=None, primary_key=True)
    alert_id: str = Field(foreign_key="alerts.id", max_length=36)
    user_id: int = Field(foreign_key="users.id")
    note: str = Field(default="", max_length=1000)
    level: int
    escalated_at: datetime = Field(sa_type=UTCDateTime)
