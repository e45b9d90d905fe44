"""`clinaiops models list|show|validate|signoff`, run as an operator would (a subprocess)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlmodel import col

from app.auth import service as auth_service
from app.auth.models import Role
from app.core.config import Environment, Settings
from app.db import session_factory
from audit.models import AuditEntry
from mlops import lifecycle
from mlops.models import ModelSignoff, ModelStatus, ModelVersion, SignoffRole
from tests.mlops import gate_models
from tests.test_cli import CLINAIOPS, Cli, _base_env, _runner

PASSWORD = "signer-password-123"


@pytest.fixture
def env(db_url: str, tmp_path: Path, signing_key_file: Path) -> dict[str, str]:
    base = _base_env(tmp_path)
    base["CLINAIOPS_DATABASE_URL"] = db_url
    return base


@pytest.fixture
def signing_key_file(tmp_path: Path) -> Path:
    from audit import keys

    path = tmp_path / "key.pem"
    keys.create_signing_key(path)
    return path


@pytest.fixture
def cli(env: dict[str, str], tmp_path: Path) -> Cli:
    return _runner(env, tmp_path)


@pytest.fixture
def stored(engine: Engine, tmp_path: Path, db_url: str) -> None:
    """v1 in production, v2 a good candidate; an ML engineer and a clinical lead."""
    settings = Settings(
        environment=Environment.TEST,
        data_dir=tmp_path,
        database_url=db_url,
        argon2_time_cost=1,
        argon2_memory_kib=1024,
    )
    models = gate_models.trained().models
    with session_factory(engine)() as s:
        v1 = gate_models.register(
            s, models["champion"], tmp_path / "m", status=ModelStatus.PRODUCTION
        )
        gate_models.register(s, models["good"], tmp_path / "m", parent=v1.version)
        for username, role, lead in (
            ("eng", Role.ML_ENGINEER, False),
            ("lead", Role.CLINICIAN, True),
        ):
            auth_service.create_user(
                s, username=username, password=PASSWORD, full_name=username.title(), role=role,
                settings=settings, is_clinical_lead=lead,
            )  # fmt: skip
        s.commit()


def _signoff(
    env: dict[str, str], cwd: Path, *args: str, stdin: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLINAIOPS), "models", "signoff", "titration", "2", *args],
        env=env,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_models_list_shows_status_aliases_and_lineage(cli: Cli, stored: None) -> None:
    result = cli("models", "list")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["model"], r["status"], r["aliases"], r["parent_version"]) for r in rows] == [
        ("titration:v1", "production", ["champion"], None),
        ("titration:v2", "candidate", [], 1),
    ]


def test_models_show_prints_lineage_and_unknown_fails_in_one_line(cli: Cli, stored: None) -> None:
    result = cli("models", "show", "titration", "2")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert (shown["label"], [p["version"] for p in shown["parents"]]) == ("titration:v2", [1])
    assert "gates_not_passed" in shown["ready_for_rollout"]
    missing = cli("models", "show", "titration", "7")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: no model titration:v7"


def test_models_validate_then_signoffs_make_the_version_ready(
    cli: Cli, stored: None, env: dict[str, str], tmp_path: Path, engine: Engine
) -> None:
    result = cli("models", "validate", "titration", "2")
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)
    assert run["passed"] is True
    assert [g["gate"] for g in run["gates"]] == list(lifecycle.REQUIRED_GATES)
    eng = _signoff(
        env, tmp_path, "--username", "eng", "--role", "ml_engineer", stdin=f"y\n{PASSWORD}\n"
    )
    assert eng.returncode == 0, eng.stderr
    assert lifecycle.SIGNOFF_MEANINGS[SignoffRole.ML_ENGINEER] in eng.stderr  # shown first
    lead = _signoff(
        env, tmp_path, "--username", "lead", "--role", "clinical_lead", "--note", "ok",
        stdin=f"y\n{PASSWORD}\n",
    )  # fmt: skip
    assert lead.returncode == 0, lead.stderr
    assert json.loads(lead.stdout)["ready_for_rollout"] == []
    with session_factory(engine)() as s:
        signed = s.scalars(select(ModelSignoff).order_by(col(ModelSignoff.id))).all()
        assert [(r.signoff_role, r.signer_name) for r in signed] == [
            ("ml_engineer", "Eng"),
            ("clinical_lead", "Lead"),
        ]
        version = s.scalars(select(ModelVersion).where(col(ModelVersion.version) == 2)).one()
        assert version.status == ModelStatus.VALIDATED
        actions = s.scalars(
            select(col(AuditEntry.action)).where(col(AuditEntry.resource_id) == "titration:v2")
        ).all()
        assert actions == [
            "model.transition",  # registered: nothing -> candidate
            "model.gates",
            "model.transition",
            "model.signed",
            "model.signed",
        ]


def test_models_signoff_when_password_wrong_refused_and_audited_as_denied(
    cli: Cli, stored: None, env: dict[str, str], tmp_path: Path, engine: Engine
) -> None:
    assert cli("models", "validate", "titration", "2").returncode == 0
    result = _signoff(
        env, tmp_path, "--username", "eng", "--role", "ml_engineer", stdin="y\nwrong\n"
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: signature_invalid: the password is wrong: nothing was signed"
    )
    with session_factory(engine)() as s:
        assert s.scalars(select(ModelSignoff)).all() == []
        entry = s.scalars(select(AuditEntry).where(col(AuditEntry.action) == "model.signoff")).one()
        assert entry.outcome == "denied"


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (
            ("--username", "eng", "--role", "ml_engineer"),
            "n\n",
            "not signed: the meaning was not confirmed",
        ),
        (("--username", "lead", "--role", "ml_engineer"), f"y\n{PASSWORD}\n", "error: wrong_role"),
        (("--username", "eng", "--role", "boss"), "", "error: unknown role 'boss'"),
        (
            ("--username", "nobody", "--role", "ml_engineer"),
            f"y\n{PASSWORD}\n",
            "error: no such user",
        ),
    ],
)
def test_models_signoff_when_refused_fails_in_one_line(
    cli: Cli, stored: None, env: dict[str, str], tmp_path: Path, args: tuple[str, ...], stdin: str,
    message: str,
) -> None:  # fmt: skip
    assert cli("models", "validate", "titration", "2").returncode == 0
    result = _signoff(env, tmp_path, *args, stdin=stdin)
    assert result.returncode == 1
    assert message in result.stderr.strip().splitlines()[-1]


def test_models_validate_when_candidate_worse_exits_1_naming_the_failed_gates(
    cli: Cli, engine: Engine, tmp_path: Path
) -> None:
    models = gate_models.trained().models
    with session_factory(engine)() as s:
        v1 = gate_models.register(
            s, models["champion"], tmp_path / "m", status=ModelStatus.PRODUCTION
        )
        gate_models.register(s, models["shuffled"], tmp_path / "m", parent=v1.version)
        s.commit()
    result = cli("models", "validate", "titration", "2")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: titration:v2 failed")
    assert "holdout_noninferiority: log-loss: the upper 95% bound" in last
    assert json.loads(result.stdout)["passed"] is False
