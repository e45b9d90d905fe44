"""The scheduler: each firing runs once across schedulers (threads here; real `clinaiops
scheduler` processes on PostgreSQL, one of them killed mid-run), the server's in-process
scheduler, the jobs API and CLI with their access rules and audit entries."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from sqlmodel import col

from app.core import clock
from app.core.config import Settings
from app.db import session_factory
from app.main import create_app
from audit.models import SignedTreeHead
from tests.conftest import World
from tests.live_server import clean_env
from validation import service, views
from validation.jobs import Job, JobContext, Schedule
from validation.models import JobRun
from validation.scheduler import Scheduler

ROOT = Path(__file__).resolve().parents[2]
CLINAIOPS = Path(sys.executable).with_name("clinaiops")
# Every scheduled job of the registry off, so a test schedules only what it names.
ALL_OFF = {
    "daily_evaluation_hour_utc": None,
    "visit_cadence_hour_utc": None,
    "drift_report_hour_utc": None,
    "audit_verify_hour_utc": None,
    "audit_checkpoint_seconds": None,
    "alert_escalation_seconds": None,
    "retraining_hour_utc": None,
    "model_validation_seconds": None,
    "rollout_analysis_seconds": None,
}


def _off_env() -> dict[str, str]:
    return {f"CLINAIOPS_{name.upper()}": "none" for name in ALL_OFF}


def _wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _runs(engine: Engine, job: str) -> list[JobRun]:
    with session_factory(engine)() as s:
        return list(s.scalars(select(JobRun).where(col(JobRun.job) == job)))


# -------------------------------------------------------------- schedulers sharing a database


def test_two_schedulers_when_firing_together_run_each_period_once(
    engine: Engine, settings: Settings
) -> None:
    ran: list[tuple[str, str]] = []
    lock = threading.Lock()

    def probe(ctx: JobContext) -> dict[str, Any]:
        with lock:
            ran.append((ctx.period, threading.current_thread().name))
        return {}

    job = Job("probe", "", Schedule.interval(1), timedelta(seconds=5), probe)
    factory = session_factory(engine)
    pair = [Scheduler(factory, {"probe": job}, settings, holder=h) for h in ("a", "b")]
    for s in pair:
        s.start()
    try:
        _wait_for(lambda: len(ran) >= 4, 15, "four firings")
    finally:
        for s in pair:
            s.stop(wait=True)
    periods = Counter(period for period, _ in ran)
    assert set(periods.values()) == {1}
    runs = _runs(engine, "probe")
    assert sorted(r.period for r in runs) == sorted(periods)
    assert {r.status for r in runs} == {"succeeded"}


def _line_pids(lines: list[str], kind: str) -> list[tuple[str, int]]:
    return [(p, int(pid)) for k, p, pid in (line.split() for line in lines) if k == kind]


class _Proc:
    """A `clinaiops scheduler` process with the test jobs, logging to a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "tests.validation.scheduler_probe", "scheduler"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


@pytest.mark.postgres
@pytest.mark.slow
def test_two_scheduler_processes_when_one_is_killed_run_each_firing_once(
    engine: Engine, db_url: str, settings: Settings, tmp_path: Path
) -> None:
    """The issue's done-when: two `clinaiops scheduler` processes on one PostgreSQL database
    run each job once per firing; SIGKILL one mid-run and the other takes the run over once
    its lease lapses."""
    probe_file = tmp_path / "probe.txt"
    probe_file.touch()

    def env(slow_seconds: str) -> dict[str, str]:
        found = clean_env(
            **_off_env(),
            CLINAIOPS_ENVIRONMENT="test",
            CLINAIOPS_DATABASE_URL=db_url,
            CLINAIOPS_DATA_DIR=str(tmp_path),
            CLINAIOPS_SIGNING_KEY_PATH=str(settings.signing_key_path),
            CLINAIOPS_JOB_LEASE_SECONDS="3",
            PROBE_FILE=str(probe_file),
            SLOW_SECONDS=slow_seconds,
            PYTHONPATH=str(ROOT),
        )
        found["CLINAIOPS_AUDIT_CHECKPOINT_SECONDS"] = "2"  # a real job, every 2 s
        return found

    def lines() -> list[str]:
        return probe_file.read_text().splitlines()

    a = _Proc(env("120"), tmp_path / "a.log")
    b: _Proc | None = None
    try:
        # A claims the day's `slow` run and sits in it, renewing its lease.
        _wait_for(lambda: (_today(), a.pid) in _line_pids(lines(), "slow-start"), 60, "A")
        b = _Proc(env("0.2"), tmp_path / "b.log")
        _wait_for(lambda: "started" in b.output(), 60, "B to start")
        seen = len(lines())
        _wait_for(lambda: len(lines()) >= seen + 3, 20, "firings with both running")
        # B looked at `slow` every second meanwhile, and left it to A.
        assert [pid for _, pid in _line_pids(lines(), "slow-start")] == [a.pid]
        a.popen.send_signal(signal.SIGKILL)
        a.popen.wait(10)
        at_kill = len(lines())
        _wait_for(lambda: _line_pids(lines(), "slow-done") != [], 30, "B to take `slow` over")
        seen = len(lines())
        _wait_for(lambda: len(lines()) >= seen + 2, 20, "B's firings alone")
        b.popen.send_signal(signal.SIGTERM)
        assert b.popen.wait(30) == 0  # a clean shutdown
        assert "stopped" in b.output()
    finally:
        a.kill()
        if b is not None:
            b.kill()

    final = lines()
    # `slow`: A started it and died; B took it over after the lease lapsed and finished it.
    assert _line_pids(final, "slow-start") == [(_today(), a.pid), (_today(), b.pid)]
    assert _line_pids(final, "slow-done") == [(_today(), b.pid)]
    assert final.index(f"slow-start {_today()} {b.pid}") >= at_kill
    [slow] = _runs(engine, "slow")
    assert (slow.status, slow.attempts, slow.holder.rsplit(":", 1)[1]) == (
        "succeeded",
        2,
        str(b.pid),
    )
    # `probe`: each period's side effect once, by the holder of its run.
    probes = _line_pids(final, "probe")
    assert len(probes) >= 6
    assert set(Counter(period for period, _ in probes).values()) == {1}
    runs = {r.period: r for r in _runs(engine, "probe")}
    for period, pid in probes:
        assert runs[period].holder.endswith(f":{pid}")
    assert {r.status for r in runs.values() if r.holder.endswith(f":{b.pid}")} == {"succeeded"}
    # `audit_checkpoint` (a real job): one signed tree head per succeeded run.
    checkpoints = _runs(engine, "audit_checkpoint")
    with session_factory(engine)() as s:
        heads = s.scalar(select(func.count()).select_from(SignedTreeHead))
    assert heads == sum(r.status == "succeeded" for r in checkpoints) >= 5


def _today() -> str:
    return clock.utcnow().date().isoformat()


# --------------------------------------------------------------------- the server's scheduler


@pytest.mark.parametrize("in_process", [True, False])
def test_server_when_worker_runs_also_schedules_jobs_unless_told_not_to(
    engine: Engine, settings: Settings, in_process: bool
) -> None:
    app = create_app(
        settings.model_copy(
            update={
                **ALL_OFF,
                "loop_worker_seconds": 60.0,  # on, but no pass within the test
                "scheduler_in_process": in_process,
                "audit_checkpoint_seconds": 1,
            }
        ),
        engine,
    )
    with TestClient(app):
        if in_process:
            _wait_for(lambda: bool(_runs(engine, "audit_checkpoint")), 10, "a checkpoint")
        else:
            time.sleep(2.5)
    assert bool(_runs(engine, "audit_checkpoint")) is in_process


# ------------------------------------------------------------------------------ the jobs API


@pytest.fixture
def api(app: FastAPI) -> FastAPI:
    """The app with the jobs router (until app.main lists it)."""
    if not any(getattr(r, "path", "").startswith("/api/v1/jobs") for r in app.routes):
        app.include_router(views.jobs_router)
    return app


@pytest.fixture
def web(api: FastAPI) -> Iterator[TestClient]:
    with TestClient(api, raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize(
    ("user", "status"),
    [("mleng", 200), ("admin", 200), ("auditor", 200), ("clina", 403), ("pa1", 403)],
)
def test_jobs_api_list_when_role_may_or_may_not_answers_per_policy(
    world: World, web: TestClient, user: str, status: int, count_audit: Callable[..., int]
) -> None:
    r = web.get("/api/v1/jobs", headers=world.auth(user))
    assert r.status_code == status
    if status == 200:
        names = {item["name"]: item for item in r.json()["items"]}
        assert names["audit_checkpoint"]["schedule"] == "every 1 h"
        assert names["daily_evaluation"]["schedule"] is None  # off in the test settings
        assert names["alert_escalation"]["last_run"] is None
        assert count_audit(action="job.list", outcome="success") == 1
    else:
        assert count_audit(action="job.list", outcome="denied") == 1


def test_jobs_api_run_when_admin_starts_one_runs_in_background_and_is_recorded(
    world: World, web: TestClient, engine: Engine, count_audit: Callable[..., int]
) -> None:
    r = web.post("/api/v1/jobs/audit_checkpoint/run", headers=world.auth("admin"))
    assert r.status_code == 202
    started = r.json()
    assert started["status"] == "running"
    assert started["period"].startswith("manual:")

    def finished() -> bool:
        page = web.get("/api/v1/jobs/audit_checkpoint/runs", headers=world.auth("auditor"))
        return page.json()["items"][0]["status"] == "succeeded"

    _wait_for(finished, 15, "the run to finish")
    page = web.get("/api/v1/jobs/audit_checkpoint/runs", headers=world.auth("mleng")).json()
    [run] = page["items"]
    assert (run["id"], run["attempts"], run["lapsed"]) == (started["id"], 1, False)
    assert set(run["details"]) == {"tree_size", "root_hash"}
    listed = web.get("/api/v1/jobs", headers=world.auth("mleng")).json()["items"]
    assert next(j for j in listed if j["name"] == "audit_checkpoint")["last_run"]["id"] == run["id"]
    with session_factory(engine)() as s:
        assert s.scalar(select(func.count()).select_from(SignedTreeHead)) == 1
    admin = f"user:{world.users['admin'].id}"
    assert count_audit(action="job.run", actor=admin, resource_id="audit_checkpoint") == 1
    assert count_audit(action="job.finish", resource_id=f"audit_checkpoint/{run['period']}") == 1


def test_jobs_api_run_when_not_allowed_or_unknown_is_refused(
    world: World, web: TestClient, engine: Engine
) -> None:
    for user in ("auditor", "clina", "pa1"):
        r = web.post("/api/v1/jobs/audit_checkpoint/run", headers=world.auth(user))
        assert r.status_code == 403, user
    r = web.post("/api/v1/jobs/no_such_job/run", headers=world.auth("mleng"))
    assert r.status_code == 404
    r = web.get("/api/v1/jobs/no_such_job/runs", headers=world.auth("mleng"))
    assert r.status_code == 404
    assert _runs(engine, "audit_checkpoint") == []


def test_jobs_api_run_when_a_run_is_live_answers_409_and_audits_the_refusal(
    world: World, web: TestClient, engine: Engine, count_audit: Callable[..., int]
) -> None:
    with session_factory(engine)() as s:
        service.claim(
            s,
            job="alert_escalation",
            period="2026-12-06T07:00:00Z",
            holder="elsewhere:1",
            now=clock.utcnow(),
            lease=timedelta(minutes=5),
        )
    r = web.post("/api/v1/jobs/alert_escalation/run", headers=world.auth("mleng"))
    assert r.status_code == 409
    assert r.json()["code"] == "job_busy"
    assert count_audit(action="job.run", outcome="failure") == 1
    assert len(_runs(engine, "alert_escalation")) == 1


def test_jobs_api_runs_when_paged_goes_back_with_before(
    world: World, web: TestClient, engine: Engine
) -> None:
    now = clock.utcnow()
    with session_factory(engine)() as s:
        for minute in range(3):
            run = service.claim(
                s,
                job="alert_escalation",
                period=f"2026-12-06T07:0{minute}:00Z",
                holder="h:1",
                now=now - timedelta(minutes=10),
                lease=timedelta(minutes=1),
            )
            assert run is not None
    url = "/api/v1/jobs/alert_escalation/runs?limit=2"
    first = web.get(url, headers=world.auth("auditor")).json()
    assert [r["period"][-6:] for r in first["items"]] == ["02:00Z", "01:00Z"]
    assert all(r["lapsed"] for r in first["items"])
    rest = web.get(f"{url}&before={first['next_before']}", headers=world.auth("auditor")).json()
    assert [r["period"][-6:] for r in rest["items"]] == ["00:00Z"]
    assert rest["next_before"] is None


# ------------------------------------------------------------------------------ the CLI


def test_cli_jobs_when_run_then_listed_records_the_run(
    engine: Engine, db_url: str, settings: Settings, tmp_path: Path, count_audit: Callable[..., int]
) -> None:
    env = clean_env(
        CLINAIOPS_ENVIRONMENT="test",
        CLINAIOPS_DATABASE_URL=db_url,
        CLINAIOPS_DATA_DIR=str(tmp_path),
        CLINAIOPS_SIGNING_KEY_PATH=str(settings.signing_key_path),
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CLINAIOPS), *args], env=env, capture_output=True, text=True, timeout=60
        )

    ran = cli("jobs", "run", "audit_checkpoint")
    assert ran.returncode == 0, ran.stderr
    done = json.loads(ran.stdout)
    assert (done["job"], done["status"]) == ("audit_checkpoint", "succeeded")
    listed = {j["job"]: j for j in map(json.loads, cli("jobs", "list").stdout.splitlines())}
    assert listed["audit_checkpoint"]["last_run"]["period"] == done["period"]
    assert listed["audit_checkpoint"]["last_run"]["status"] == "succeeded"
    assert listed["daily_evaluation"]["schedule"].startswith("daily from 06:00 UTC")
    assert count_audit(action="job.run", actor_role="operator") == 1
    unknown = cli("jobs", "run", "no_such_job")
    assert unknown.returncode == 1
    assert "no such job: no_such_job" in unknown.stderr
    only = cli("scheduler", "--only", "no_such_job")
    assert only.returncode == 1
    assert "no such job" in only.stderr


def test_cli_scheduler_when_sigterm_stops_cleanly(
    engine: Engine, db_url: str, settings: Settings, tmp_path: Path
) -> None:
    env = clean_env(
        **_off_env(),
        CLINAIOPS_ENVIRONMENT="test",
        CLINAIOPS_DATABASE_URL=db_url,
        CLINAIOPS_DATA_DIR=str(tmp_path),
        CLINAIOPS_SIGNING_KEY_PATH=str(settings.signing_key_path),
    )
    env["CLINAIOPS_AUDIT_CHECKPOINT_SECONDS"] = "1"
    log = tmp_path / "scheduler.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(CLINAIOPS), "scheduler"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_for(lambda: len(_runs(engine, "audit_checkpoint")) >= 2, 60, "two checkpoints")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "SIGTERM received, stopping" in text
    assert "stopped" in text
    assert {r.status for r in _runs(engine, "audit_checkpoint")} == {"succeeded"}
