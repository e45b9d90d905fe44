"""The model lifecycle over HTTP: training, the privacy ledger, versions and their lineage,
validation, sign-offs, rollout and rollback (ML engineers; clinical leads sign off)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1", tags=["models"])
