"""Import every table module so SQLModel.metadata is complete (Alembic, tests)."""

from sqlmodel import SQLModel

import app.auth.models
import app.patients.models
import audit.models
import device_ingest.models
import loops.care.models
import loops.messages.models
import loops.models
import loops.review.models
import loops.visits.models
import mlops.models
import policies.models
import validation.models

metadata = SQLModel.metadata

__all__ = ["app", "audit", "device_ingest", "loops", "metadata", "mlops", "policies", "validation"]
