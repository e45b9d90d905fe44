"""`clinaiops visits recompute`, run as an operator would (a subprocess on this test's
database), and its audit entry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import Engine, select
from sqlmodel import col

from app.db import session_factory
from audit.models import AuditEntry
from loops.visits.models import Visit
from tests.conftest import World

CLINAIOPS = Path(sys.executable).with_name("clinaiops")


def _run(db_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINAIOPS_")}
    env.update(
        CLINAIOPS_ENVIRONMENT="test",
        CLINAIOPS_DATA_DIR=str(tmp_path),
        CLINAIOPS_DATABASE_URL=db_url,
        NO_COLOR="1",
    )
    return subprocess.run(
        [str(CLINAIOPS), *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_visits_recompute_when_run_creates_due_visits_and_audits(
    world: World, engine: Engine, db_url: str, tmp_path: Path
) -> None:
    pa1 = world.patients["pa1"].id
    world.session.rollback()
    one = _run(db_url, tmp_path, "visits", "recompute", "--patient", pa1)
    assert one.returncode == 0, one.stderr
    out = json.loads(one.stdout)
    assert (out["patient"], out["created"], out["kind"]) == (pa1, 1, "visit")
    assert out["reasons"] == ["insufficient_data"]
    every = _run(db_url, tmp_path, "visits", "recompute")
    assert every.returncode == 0, every.stderr
    assert json.loads(every.stdout) == {"patients": 4, "created": 3, "updated": 0, "unchanged": 1}
    with session_factory(engine)() as s:
        assert len(s.scalars(select(Visit)).all()) == 4
        actors = s.scalars(
            select(col(AuditEntry.actor)).where(col(AuditEntry.action) == "visit.recompute")
        ).all()
        assert len(actors) == 2
        assert all(a.startswith("cli:") for a in actors)
    missing = _run(db_url, tmp_path, "visits", "recompute", "--patient", "nope")
    assert missing.returncode == 1
    assert "no patient with id nope" in missing.stderr
