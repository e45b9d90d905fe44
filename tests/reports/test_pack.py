"""The monthly compliance pack: every report in every format, the audit-trail export and the
FHIR NDJSON written with a manifest whose hashes match and whose signature verifies; the
scheduled job runs once per month under its lease and is audited; the CLI writes a pack."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Engine, select
from sqlmodel import col

from app.core.config import Settings
from app.db import session_factory
from audit.keys import load_signing_key
from audit.models import AuditEntry
from audit.verifier import parse_seq_spec, verify_export
from reports import audit_export, pack
from reports.catalogue import CATALOGUE
from reports.models import ReportFormat
from reports.periods import month_period, parse_month, previous_month
from tests.live_server import clean_env
from tests.reports.conftest import Seeded
from validation import jobs, scheduler
from validation.jobs import MonthlySchedule

CLINAIOPS = Path(sys.executable).with_name("clinaiops")


def _next_month_start(now: datetime) -> datetime:
    """Day 1, 05:00 UTC of the month after `now`'s (the pack then covers `now`'s month)."""
    first = datetime(now.year, now.month, 1, tzinfo=UTC) + timedelta(days=32)
    return datetime(first.year, first.month, 1, 5, tzinfo=UTC)


def _run(engine: Engine, settings: Settings, now: datetime) -> scheduler.RunResult:
    job = jobs.registry(settings)["compliance_pack"]
    assert job.schedule is not None
    return scheduler.run_job(
        session_factory(engine),
        job,
        settings=settings,
        now=now,
        period=job.schedule.period_of(now),
        holder="test",
    )


def test_monthly_schedule_when_before_its_day_is_not_due_and_one_period_per_month() -> None:
    monthly = MonthlySchedule.monthly(3, 4, recheck_seconds=600)
    assert not monthly.due(datetime(2026, 12, 2, 23, 59, tzinfo=UTC))
    assert not monthly.due(datetime(2026, 12, 3, 3, 59, tzinfo=UTC))
    assert monthly.due(datetime(2026, 12, 3, 4, tzinfo=UTC))
    assert monthly.due(datetime(2026, 12, 31, 23, tzinfo=UTC))
    assert monthly.period_of(datetime(2026, 12, 3, 4, tzinfo=UTC)) == "2026-12"
    assert monthly.period_of(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == "2026-12"
    assert monthly.period_of(datetime(2027, 1, 1, tzinfo=UTC)) == "2027-01"
    assert monthly.describe().startswith("monthly from day 3 at 04:00 UTC")
    with pytest.raises(ValueError, match="1-28"):
        MonthlySchedule.monthly(31, 4, recheck_seconds=600)


def test_registry_when_pack_day_or_hour_is_none_leaves_the_pack_unscheduled(
    settings: Settings,
) -> None:
    found = jobs.registry(settings)
    assert found["compliance_pack"].schedule == MonthlySchedule.monthly(
        1, 4, recheck_seconds=settings.daily_job_recheck_seconds
    )
    off = jobs.registry(settings.model_copy(update={"compliance_pack_day": None}))
    assert off["compliance_pack"].schedule is None


def test_periods_when_months_are_named_cover_the_calendar_month() -> None:
    assert parse_month("2026-02") == month_period(2026, 2)
    assert month_period(2026, 12).end == datetime(2027, 1, 1, tzinfo=UTC)
    assert previous_month(datetime(2027, 1, 1, 4, tzinfo=UTC)) == month_period(2026, 12)


def test_pack_job_when_run_writes_signed_manifest_once_per_month(
    seeded: Seeded, engine: Engine
) -> None:
    settings = seeded.world.settings
    now = _next_month_start(seeded.period.start)
    result = _run(engine, settings, now)
    assert result.status == scheduler.SUCCEEDED, result
    month = pack.month_label(previous_month(now))
    folder = settings.data_dir / "compliance" / month
    assert result.details["month"] == month
    assert folder.is_dir()
    manifest_bytes = (folder / pack.MANIFEST).read_bytes()
    manifest = json.loads(manifest_bytes)
    listed = {item["path"]: item for item in manifest["files"]}
    # Every report in every format (a builder not deployed yet is listed as skipped).
    skipped = manifest["skipped"]
    assert all(s.endswith("report_unavailable") for s in skipped)
    for entry in CATALOGUE:
        for fmt in ReportFormat:
            names = [p for p in listed if p.startswith(f"reports/clinaiops-{entry.kind}-")]
            assert any(p.endswith(f".{fmt}") for p in names) or f"{entry.kind}.{fmt}: " in " ".join(
                skipped
            )
    for kind in ("audit-trail", "decision-log", "access"):
        for fmt in ReportFormat:
            assert any(
                p.startswith(f"reports/clinaiops-{kind}-") and p.endswith(f".{fmt}") for p in listed
            )
    assert {"fhir/AuditEvent.ndjson", "fhir/Provenance.ndjson", "public_key.pem"} <= set(listed)
    assert "audit-trail-export/entries.jsonl" in listed
    # Every file's hash and size as listed, and nothing on disk unlisted.
    for path, item in listed.items():
        data = (folder / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == item["sha256"]
        assert len(data) == item["bytes"]
    assert pack.verify_manifest(folder, _public(settings)) == []
    # The signature verifies with the audit public key (raises if not) ...
    _public(settings).verify((folder / pack.SIGNATURE).read_bytes(), manifest_bytes)
    # ... and not over a changed manifest.
    with pytest.raises(InvalidSignature):
        _public(settings).verify((folder / pack.SIGNATURE).read_bytes(), manifest_bytes + b" ")
    # The audit-trail export in the pack verifies offline.
    export = folder / pack.AUDIT_DIR
    checked = verify_export(
        audit_export.entries_lines((export / audit_export.ENTRIES_FILE).read_bytes()),
        json.loads((export / audit_export.STH_FILE).read_bytes()),
        (export / audit_export.KEY_FILE).read_bytes(),
        strict=True,
        expected_seqs=parse_seq_spec((export / audit_export.SEQS_FILE).read_text()),
    )
    assert checked.ok, checked
    # Audited, with the manifest's hash.
    with session_factory(engine)() as s:
        entries = list(s.scalars(select(AuditEntry).where(col(AuditEntry.action) == "report.pack")))
    assert len(entries) == 1
    details = json.loads(entries[0].details)
    assert details["manifest_sha256"] == hashlib.sha256(manifest_bytes).hexdigest()
    assert entries[0].actor == jobs.ACTOR
    # Once per month: a later firing the same month finds the period done.
    again = _run(engine, settings, now + timedelta(days=3))
    assert again.status == scheduler.SKIPPED
    assert again.reason == "done"


def test_verify_manifest_when_a_file_changes_names_it(seeded: Seeded, engine: Engine) -> None:
    settings = seeded.world.settings
    assert _run(engine, settings, _next_month_start(seeded.period.start)).status == "succeeded"
    (folder,) = (settings.data_dir / "compliance").iterdir()
    target = folder / "fhir" / "AuditEvent.ndjson"
    data = bytearray(target.read_bytes())
    data[10] ^= 1
    target.write_bytes(bytes(data))
    (folder / "extra.txt").write_text("x")
    assert pack.verify_manifest(folder, _public(settings)) == [
        "fhir/AuditEvent.ndjson: hash or size differs",
        "extra.txt: not in the manifest",
    ]


def test_cli_pack_when_run_writes_the_month_and_refuses_a_second_time(
    seeded: Seeded, tmp_path: Path
) -> None:
    settings = seeded.world.settings
    env = clean_env(
        CLINAIOPS_ENVIRONMENT="test",
        CLINAIOPS_DATABASE_URL=settings.database_url,
        CLINAIOPS_DATA_DIR=str(settings.data_dir),
        CLINAIOPS_SIGNING_KEY_PATH=str(settings.signing_key_path),
    )
    month = pack.month_label(seeded.period)
    out = tmp_path / "packs"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CLINAIOPS), "reports", "pack", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    first = run("--month", month, "--out", str(out))
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout.strip().splitlines()[-1])
    assert report["folder"] == str(out / month)
    assert pack.verify_manifest(out / month, _public(settings)) == []
    second = run("--month", month, "--out", str(out))
    assert second.returncode == 1
    assert "already exists" in second.stderr
    bad = run("--month", "2026-13")
    assert bad.returncode == 1
    assert "YYYY-MM" in bad.stderr


def _public(settings: Settings) -> Ed25519PublicKey:
    assert settings.signing_key_path is not None
    return load_signing_key(settings.signing_key_path).public_key()


def test_pack_job_when_a_pack_was_never_audited_sets_it_aside_and_writes_again(
    seeded: Seeded, engine: Engine
) -> None:
    """A run whose commit failed left its folder but no `report.pack` entry: the next run does
    not take that folder for evidence."""
    settings = seeded.world.settings
    now = _next_month_start(seeded.period.start)
    month = pack.month_label(previous_month(now))
    stale = settings.data_dir / "compliance" / month
    stale.mkdir(parents=True)
    (stale / pack.MANIFEST).write_text('{"files": []}\n')
    result = _run(engine, settings, now)
    assert result.status == scheduler.SUCCEEDED, result
    assert pack.verify_manifest(stale, _public(settings)) == []
    (aside,) = (settings.data_dir / "compliance").glob(f".{month}.unaudited-*")
    assert (aside / pack.MANIFEST).read_text() == '{"files": []}\n'
    with session_factory(engine)() as s:
        assert pack.audited(s, stale)
        assert not pack.audited(s, aside)
