"""`clinaiops models rollout | tick | rollback`, run as an operator would (a subprocess on
this test's database)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlmodel import col

from app.db import session_factory
from audit.models import AuditEntry
from mlops.models import Rollout
from tests.conftest import World
from tests.mlops.rollout_setup import Rig

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
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_models_rollout_tick_and_rollback_from_the_command_line(
    world: World, engine: Engine, db_url: str, tmp_path: Path
) -> None:
    Rig(world, tmp_path, challenger_push=2.0)
    world.session.rollback()

    started = _run(db_url, tmp_path, "models", "rollout", "titration", "2", "--dwell-minutes", "5")
    assert started.returncode == 0, started.stderr
    out = json.loads(started.stdout)
    assert (out["model"], out["status"], out["dwell_seconds"]) == ("titration:v2", "shadow", 300)

    tick = _run(db_url, tmp_path, "models", "tick")
    assert tick.returncode == 0, tick.stderr
    (step,) = [json.loads(line) for line in tick.stdout.splitlines()]
    assert (step["decision"], step["stage"]) == ("hold", "shadow")

    no_reason = _run(db_url, tmp_path, "models", "rollback")
    assert no_reason.returncode != 0

    back = _run(db_url, tmp_path, "models", "rollback", "--reason", "drill")
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout) == {"retired_version": 2, "serving_version": 1, "rollout": 1}

    again = _run(db_url, tmp_path, "models", "rollback", "--reason", "drill")
    assert again.returncode == 1
    assert "no_previous_version" in again.stderr

    with session_factory(engine)() as s:
        (rollout,) = s.scalars(select(Rollout)).all()
        assert rollout.status == "rolled_back"
        assert rollout.end_reason == "manual rollback: drill"
        actors = s.scalars(
            select(col(AuditEntry.actor)).where(
                col(AuditEntry.action).in_(("model.rollout.start", "model.rollout.rollback"))
            )
        ).all()
        assert len(actors) == 2
        assert all(a.startswith("cli:") for a in actors)
