"""Register model versions and find the one in production: the champion (mlops/lifecycle.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core import clock
from mlops import lifecycle
from mlops.models import ModelStatus, ModelVersion

TITRATION = "titration"


def code_version() -> str:
    """The code a model was trained with: CLINAIOPS_CODE_VERSION, else the git commit."""
    if env := os.environ.get("CLINAIOPS_CODE_VERSION"):
        return env[:64]
    git = shutil.which("git")
    if git is None:
        return "unknown"
    try:
        out = subprocess.run(  # noqa: S603 - fixed arguments, no input
            [git, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parents[1],
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()[:64] or "unknown"


def register(
    session: Session,
    *,
    name: str,
    artifact_path: Path,
    artifact_sha256: str,
    data_hash: str,
    feature_names: tuple[str, ...],
    params: dict[str, Any],
    metrics: dict[str, Any],
    privacy: dict[str, Any],
    created_by: str,
    status: ModelStatus = ModelStatus.CANDIDATE,
    parent_version: int | None = None,
    now: datetime | None = None,
    reason: str = "registered",
) -> ModelVersion:
    """Add the next version of `name`; the caller audits the registration and commits.

    Every version gets its first history row (nothing -> its status, with `reason`), so the
    change-control log says where each version came from; one registered directly in
    production also becomes the champion and retires the one it replaces
    (`lifecycle.record_registration`)."""
    latest = session.scalar(
        select(func.max(ModelVersion.version)).where(col(ModelVersion.name) == name)
    )
    version = ModelVersion(
        name=name,
        version=(latest or 0) + 1,
        status=status,
        artifact_path=str(artifact_path),
        artifact_sha256=artifact_sha256,
        data_hash=data_hash,
        code_version=code_version(),
        feature_names=list(feature_names),
        params=params,
        metrics=metrics,
        privacy=privacy,
        parent_version=parent_version,
        created_by=created_by,
    )
    session.add(version)
    session.flush()
    lifecycle.record_registration(
        session=session,
        version=version,
        actor=created_by,
        now=now or clock.utcnow(),
        reason=reason,
    )
    return version


def production(session: Session, *, name: str = TITRATION) -> ModelVersion | None:
    """The version of `name` serving patients: its champion (`lifecycle.champion`)."""
    return lifecycle.champion(session, name=name)


def label(version: ModelVersion) -> str:
    """How proposals and audit entries name a model version, e.g. `titration:v3`."""
    return f"{version.name}:v{version.version}"
