"""The append-only audit log and its signed tree heads."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Column, Text
from sqlmodel import Field, SQLModel

from app.db import UTCDateTime


class Outcome(StrEnum):
    """How an audited act ended."""

    SUCCESS = "success"
    DENIED = "denied"
    FAILURE = "failure"


class AuditEntry(SQLModel, table=True):
    """One audited act; a leaf of the RFC 9162 Merkle tree (leaf index = seq - 1)."""

    __tablename__ = "audit_entries"

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    ts: datetime = Field(sa_type=UTCDateTime)
    actor: str = Field(max_length=100)
    actor_role: str = Field(max_length=32)
    action: str = Field(max_length=100, index=True)
    resource_type: str = Field(max_length=64)
    resource_id: str | None = Field(default=None, max_length=100)
    patient_id: str | None = Field(default=None, max_length=36, index=True)
    outcome: str = Field(max_length=16)
    request_id: str | None = Field(default=None, max_length=64)
    # Canonical JSON text, so what is hashed is exactly what is stored on every backend.
    details: str = Field(sa_column=Column(Text, nullable=False))
    prev_leaf_hash: str = Field(max_length=64)
    leaf_hash: str = Field(max_length=64, unique=True)


class SignedTreeHead(SQLModel, table=True):
    """An Ed25519-signed commitment to the first `tree_size` entries."""

    __tablename__ = "signed_tree_heads"

    id: int | None = Field(default=None, primary_key=True)
    tree_size: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    root_hash: str = Field(max_length=64)
    timestamp: str = Field(max_length=32)
    log_id: str = Field(max_length=64)
    signature: str = Field(max_length=128)
    created_at: datetime = Field(sa_type=UTCDateTime)
