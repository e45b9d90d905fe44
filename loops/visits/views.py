"""Visit cadence and pre-visit summaries over HTTP (patient /api/v1/me, care team /api/v1)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1", tags=["patient-clinician loop"])
