"""`clinaiops drift list|show`: the drift reports from the command line."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from app.db import session_factory
from tests.test_cli import Cli, _base_env, _runner
from validation.models import DriftReport


@pytest.fixture
def cli(engine: Engine, db_url: str, tmp_path: Path) -> Cli:
    """The CLI against the test database."""
    base = _base_env(tmp_path)
    base["CLINAIOPS_DATABASE_URL"] = db_url
    return _runner(base, tmp_path)


def test_drift_list_when_reports_stored_prints_newest_first(cli: Cli, engine: Engine) -> None:
    at = datetime(2026, 12, 6, 3, tzinfo=UTC)
    with session_factory(engine)() as s:
        for status in ("ok", "drift"):
            s.add(
                DriftReport(
                    created_at=at,
                    created_by="system:scheduler",
                    window_start=at,
                    window_end=at,
                    status=status,
                    headline=f"{status} headline",
                    reference="training:" + "0" * 64,
                    feature_set="clinaiops-features/2",
                    reference_rows=10,
                    current_rows=5,
                    drifted_features=1 if status == "drift" else 0,
                    summary={"features": []},
                )
            )
        s.commit()
    listed = cli("drift", "list")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["status"], r["drifted_features"]) for r in rows] == [("drift", 1), ("ok", 0)]
    shown = cli("drift", "show", str(rows[0]["id"]))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["summary"] == {"features": []}


def test_drift_show_when_unknown_fails_in_one_line(cli: Cli) -> None:
    result = cli("drift", "show", "999")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: no drift report with id 999"
