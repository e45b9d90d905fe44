"""Load test: 3 API replicas and a scheduler on PostgreSQL, devices, clinicians and patients.

Creates a fresh PostgreSQL database (dropped at the end), migrates it (`clinaiops init`),
seeds care teams, clinicians, patients with one cuff each and a proposal each, starts the API
replicas (`clinaiops serve`, separate processes and ports, in-process scheduler off) and one
`clinaiops scheduler` (jobs on short intervals), then for `--duration` seconds drives:
devices sending readings (FHIR batch Bundles and Open mHealth lists, each with an
Idempotency-Key; some deliberately retried with the same key, some resent under a new key,
some implausible and quarantined, some invalid and refused), clinicians working the review
queue (claim, read, decide with a signature) and patients polling. Loopback only; bounded in
time (the drive stops at the deadline, retries at 90 s) and count (fixed user numbers).

With `--faults`, during the drive: SIGKILL one replica (restarted 10 s later), restart
PostgreSQL (`pg_ctlcluster 15 main restart`, as root), SIGKILL the scheduler while it holds
a job lease when it can catch one (and start another).

Prints throughput, p50/p95/p99 per endpoint group, answers by status, and a reconciliation
from the database; exits 1 when the reconciliation fails.

Usage: python bench/load.py [--short] [--duration 600] [--faults]
       [--server postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from load_seed import seed  # noqa: E402
from load_traffic import (  # noqa: E402
    Cluster,
    Device,
    Stats,
    clinician_loop,
    device_loop,
    now_utc,
    patient_loop,
)

from app.core.config import Settings  # noqa: E402
from tests.live_server import CLINAIOPS, LiveServer, clean_env  # noqa: E402

PASSWORD = "load-" + secrets.token_urlsafe(16)


def log(msg: str) -> None:
    """Progress on stderr with a timestamp."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pg_admin(server: str, statement: str) -> None:
    """Run one statement on the server's `postgres` database, autocommit."""
    u = make_url(server)
    with psycopg.connect(
        host=u.host or "127.0.0.1",
        port=u.port or 5432,
        user=u.username or "postgres",
        password=u.password,
        dbname="postgres",
        autocommit=True,
        connect_timeout=10,
    ) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


def pg_query(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of one query on the load database."""
    u = make_url(url)
    with psycopg.connect(
        host=u.host,
        port=u.port,
        user=u.username,
        password=u.password,
        dbname=u.database,
        connect_timeout=10,
    ) as conn:
        return list(conn.execute(sql).fetchall())  # type: ignore[arg-type]


def restart_postgres(port: str) -> float:
    """Restart the local PostgreSQL cluster; returns the outage in seconds."""
    if os.geteuid() != 0:
        raise RuntimeError("restarting PostgreSQL needs root")
    t0 = time.monotonic()
    if shutil.which("pg_lsclusters") and shutil.which("pg_ctlcluster"):
        # The Debian cluster on port 5432 (e.g. `15 main`).
        listing = subprocess.run(
            ["pg_lsclusters", "-h"], check=True, capture_output=True, text=True, timeout=30
        ).stdout
        version, cluster = next(
            (f[0], f[1]) for f in (line.split() for line in listing.splitlines()) if f[2] == port
        )
        cmd = ["pg_ctlcluster", version, cluster, "restart", "-m", "fast"]
    else:
        cmd = ["service", "postgresql", "restart"]
    subprocess.run(cmd, check=True, timeout=120, capture_output=True)
    return time.monotonic() - t0


class Scheduler:
    """A `clinaiops scheduler` process."""

    def __init__(self, env: dict[str, str], cwd: Path, n: int) -> None:
        self.log = cwd / f"scheduler-{n}.log"
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                [str(CLINAIOPS), "scheduler"],
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """SIGKILL."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=15)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def settings_env(url: str, data_dir: Path) -> dict[str, str]:
    """The environment every process of the run shares: short job intervals, a short lease."""
    return clean_env(
        CLINAIOPS_DATABASE_URL=url,
        CLINAIOPS_DATA_DIR=str(data_dir),
        CLINAIOPS_SECRET_KEY=secrets.token_urlsafe(32),
        CLINAIOPS_SCHEDULER_IN_PROCESS="false",
        CLINAIOPS_ACCESS_TOKEN_MINUTES="60",  # noqa: S106 - a number, not a password
        CLINAIOPS_MAX_CONCURRENT_REQUESTS="16",
        CLINAIOPS_JOB_LEASE_SECONDS="6",
        CLINAIOPS_AUDIT_CHECKPOINT_SECONDS="5",
        CLINAIOPS_ALERT_ESCALATION_SECONDS="3",
        CLINAIOPS_ROLLOUT_ANALYSIS_SECONDS="7",
        CLINAIOPS_MODEL_VALIDATION_SECONDS="11",
        CLINAIOPS_AUDIT_VERIFY_HOUR_UTC="0",
        CLINAIOPS_VISIT_CADENCE_HOUR_UTC="0",
        CLINAIOPS_DAILY_JOB_RECHECK_SECONDS="13",
        CLINAIOPS_DAILY_EVALUATION_HOUR_UTC="none",
        CLINAIOPS_DRIFT_REPORT_HOUR_UTC="none",
        CLINAIOPS_RETRAINING_HOUR_UTC="none",
        CLINAIOPS_COMPLIANCE_PACK_DAY="none",
    )


async def drive(
    bases: list[str], seeded: Any, duration: float, faults: Any, stats: Stats, seed_value: int
) -> float:
    """Run every simulated user until the deadline; returns the elapsed seconds."""
    rng = random.Random(seed_value)
    cluster = Cluster(bases, stats, concurrency=48)
    start = now_utc().replace(microsecond=0) - __import__("datetime").timedelta(days=20)
    t0 = time.monotonic()
    stats.t0 = t0
    stop_at = t0 + duration
    devices = [
        Device(index=i, key=k, rng=random.Random(seed_value * 100_003 + i))
        for i, k in enumerate(seeded.device_keys)
    ]
    # 500 devices over 2 cores: one batch per device every ~20 s on average.
    tasks = [asyncio.create_task(device_loop(cluster, d, start, stop_at, 20.0)) for d in devices]
    tasks += [
        asyncio.create_task(
            clinician_loop(
                cluster,
                u,
                f"Dr. Load {u.removeprefix('loadclin')}",
                PASSWORD,
                stop_at,
                random.Random(rng.random()),
            )
        )
        for u in seeded.clinicians
    ]
    tasks += [
        asyncio.create_task(
            patient_loop(cluster, u, PASSWORD, stop_at, random.Random(rng.random()))
        )
        for u in seeded.patients
    ]
    if faults is not None:
        tasks.append(asyncio.create_task(faults(t0, duration)))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await cluster.close()
    for r in results:
        if isinstance(r, BaseException):
            log(f"a driver or fault failed: {r!r}")
            stats.driver_failures.append(repr(r))
    return time.monotonic() - t0


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0-1) in milliseconds."""
    if not values:
        return float("nan")
    s = sorted(values)
    return 1000 * s[min(len(s) - 1, int(q * len(s)))]


def report(stats: Stats, elapsed: float) -> int:
    """Print throughput and latencies; returns the number of answered requests."""
    total = sum(len(v) for v in stats.latencies.values())
    print(f"\nduration {elapsed:.1f} s, {total} answered requests, {total / elapsed:.1f} req/s")
    print(
        f"readings sent {stats.sent_entries} ({stats.sent_entries / elapsed:.1f}/s); "
        f"retries {stats.retries}; unanswered {stats.unanswered}; "
        f"transport errors {dict(stats.transport_errors)}"
    )
    if stats.server_errors_at:
        by_5s = Counter(5 * int(t // 5) for t in stats.server_errors_at)
        spans = ", ".join(f"{t}-{t + 5} s: {n}" for t, n in sorted(by_5s.items()))
        print(f"5xx answers by time into the drive: {spans}")
    print(
        f"\n{'group':16} {'n':>7} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  statuses"
    )
    for group in sorted(stats.latencies):
        v = stats.latencies[group]
        print(
            f"{group:16} {len(v):7d} {len(v) / elapsed:7.1f} {pct(v, 0.5):8.1f} "
            f"{pct(v, 0.95):8.1f} {pct(v, 0.99):8.1f}  "
            f"{dict(sorted(stats.statuses[group].items()))}"
        )
    return total


def reconcile(url: str, stats: Stats, env: dict[str, str], workdir: Path) -> list[str]:
    """Compare what the clients were told with what the database holds; the failures."""
    failures: list[str] = []

    def check(name: str, ok: bool, detail: str) -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
        if not ok:
            failures.append(name)

    print("\nreconciliation")
    ((accepted, quarantined),) = pg_query(
        url,
        "SELECT count(*) FILTER (WHERE status = 'accepted'),"
        " count(*) FILTER (WHERE status = 'quarantined') FROM readings",
    )
    ((b_entries, b_acc, b_q, b_dup, b_rej, n_batches),) = pg_query(
        url,
        "SELECT coalesce(sum(entries), 0), coalesce(sum(accepted), 0),"
        " coalesce(sum(quarantined), 0), coalesce(sum(duplicates), 0),"
        " coalesce(sum(rejected), 0), count(*) FROM ingest_batches",
    )
    ((rejections,),) = pg_query(url, "SELECT count(*) FROM ingest_rejections")
    a = stats.answered
    stored = accepted + quarantined + b_dup + rejections
    check(
        "readings sent = stored + duplicates + quarantined + rejected",
        stats.sent_entries == stored and stats.unanswered == 0,
        f"sent {stats.sent_entries} = accepted {accepted} + duplicates {b_dup} + quarantined "
        f"{quarantined} + rejected {rejections} = {stored} (unanswered requests: "
        f"{stats.unanswered})",
    )
    check(
        "answers = database, per outcome",
        (a["accepted"], a["quarantined"], a["duplicate"], a["rejected"])
        == (accepted, quarantined, b_dup, rejections),
        f"answers accepted {a['accepted']}, quarantined {a['quarantined']}, duplicate "
        f"{a['duplicate']}, rejected {a['rejected']}",
    )
    check(
        "ingest_batches counts = rows",
        (b_acc, b_q, b_rej, b_entries) == (accepted, quarantined, rejections, stored),
        f"{n_batches} batches: entries {b_entries}, accepted {b_acc}, quarantined {b_q}, "
        f"duplicates {b_dup}, rejected {b_rej}",
    )
    check(
        "intended outcomes of new readings",
        (stats.intended["accepted"], stats.intended["quarantined"]) == (accepted, quarantined),
        f"intended accepted {stats.intended['accepted']}, quarantined "
        f"{stats.intended['quarantined']}, invalid {stats.intended['invalid']}",
    )
    # Every key's answer (first, retried through a fault, or replayed) is the stored one.
    rows = pg_query(url, "SELECT key, status_code, response_body FROM idempotency_keys")
    held = {k: (s, b) for k, s, b in rows}
    bad = [
        k
        for k, (_, st, body) in stats.keys.items()
        if k not in held or held[k][0] != st or held[k][1].encode() != body
    ]
    retried = stats.fault_retried_keys & set(stats.keys)
    check(
        "every idempotency key answered with the stored answer",
        not bad and stats.replay_mismatches == 0 and len(held) == len(stats.keys),
        f"{len(stats.keys)} keys answered, {len(held)} stored; {len(bad)} differ; "
        f"{stats.replay_checks} deliberate replays, {stats.replay_mismatches} differ; "
        f"{len(retried)} keys retried through errors, "
        f"{len([k for k in retried if k in bad])} of them differ",
    )
    decided = {r[0] for r in pg_query(url, "SELECT proposal_id FROM decisions")}
    made = stats.decisions_made | stats.decisions_lost_answer
    check(
        "decisions made (201) = decisions stored",
        decided == made,
        f"201 answers {len(stats.decisions_made)}, answers lost then found ours "
        f"{len(stats.decisions_lost_answer)}, stored {len(decided)}",
    )
    # Each job firing ran once: one succeeded finish per (job, period), and the run rows agree.
    runs = pg_query(
        url,
        "SELECT job, status, count(*) FROM job_runs GROUP BY job, status ORDER BY 1, 2",
    )
    finished: dict[str, int] = {}
    for resource, details in pg_query(
        url, "SELECT resource_id, details FROM audit_entries WHERE action = 'job.finish'"
    ):
        if json.loads(details).get("status") == "succeeded":
            finished[resource] = finished.get(resource, 0) + 1
    twice = {k: n for k, n in finished.items() if n > 1}
    ((succeeded_runs,),) = pg_query(url, "SELECT count(*) FROM job_runs WHERE status = 'succeeded'")
    ((checkpoints,),) = pg_query(url, "SELECT count(*) FROM signed_tree_heads")
    ((cp_runs,),) = pg_query(
        url, "SELECT count(*) FROM job_runs WHERE job = 'audit_checkpoint' AND status = 'succeeded'"
    )
    taken_over = pg_query(url, "SELECT job, period, attempts FROM job_runs WHERE attempts > 1")
    not_succeeded = pg_query(
        url, "SELECT job, period, status, details FROM job_runs WHERE status <> 'succeeded'"
    )
    check(
        "each job firing ran once",
        not twice and succeeded_runs == len(finished) and checkpoints <= cp_runs,
        f"runs {runs}; succeeded runs {succeeded_runs} = "
        f"(job, period)s with a succeeded job.finish {len(finished)}, twice {twice}; "
        f"signed tree heads {checkpoints} "
        f"<= checkpoint runs {cp_runs}; taken over: {taken_over}; not succeeded: {not_succeeded}",
    )
    check(
        "every driver and fault ran to its end",
        not stats.driver_failures,
        f"{len(stats.driver_failures)} failed: {stats.driver_failures[:3]}",
    )
    verify = subprocess.run(
        [str(CLINAIOPS), "audit", "verify"],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = (verify.stdout + verify.stderr).strip().splitlines()
    check("clinaiops audit verify", verify.returncode == 0, out[-1] if out else "")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--short", action="store_true", help="60 s instead of 600 s")
    parser.add_argument("--faults", action="store_true")
    parser.add_argument("--server", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--clinicians", type=int, default=20)
    parser.add_argument("--patients", type=int, default=50, help="patients who log in and poll")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--tag", default=str(os.getpid()), help="ends the database's name")
    parser.add_argument("--workdir", help="for the logs and data folder (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args()
    duration = 60.0 if args.short else args.duration
    if not args.tag.isascii() or not args.tag.isalnum():
        parser.error("--tag: letters and digits only")
    name = f"clinaiops_load_{int(time.time())}_{args.tag}"
    url = make_url(args.server).set(database=name).render_as_string(hide_password=False)
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="clinaiops-load-"))
    env = settings_env(url, workdir / "var")
    replicas: list[LiveServer] = []
    schedulers: list[Scheduler] = []
    failures: list[str] = ["not run"]
    pg_admin(args.server, f'CREATE DATABASE "{name}"')
    # SIGTERM (CI timeout) unwinds through the finally below like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        log(f"database {name}; work folder {workdir}")
        subprocess.run(
            [str(CLINAIOPS), "init"],
            env=env,
            cwd=workdir,
            check=True,
            capture_output=True,
            timeout=300,
        )
        t = time.monotonic()
        # A production model, so the loop workers evaluate the readings as they arrive and
        # queue proposals, as in a clinic (the demo's training run; about 20 s).
        subprocess.run(
            [str(CLINAIOPS), "models", "train-initial", "--patients", "120", "--days", "70"],
            env=env,
            cwd=workdir,
            check=True,
            capture_output=True,
            timeout=600,
        )
        log(f"trained model v1 in {time.monotonic() - t:.1f} s")
        t = time.monotonic()
        seeded = seed(
            Settings(
                database_url=url,
                data_dir=workdir / "var",
                secret_key=env["CLINAIOPS_SECRET_KEY"],
            ),
            n_devices=args.devices,
            n_clinicians=args.clinicians,
            n_patient_logins=args.patients,
            password=PASSWORD,
        )
        log(
            f"seeded {args.devices} patients and devices, {args.clinicians} clinicians, "
            f"{seeded.proposals} proposals in {time.monotonic() - t:.1f} s"
        )
        replicas.extend(
            LiveServer(args=["serve"], env=env, cwd=workdir) for _ in range(args.replicas)
        )
        with ThreadPoolExecutor(args.replicas) as pool:
            list(pool.map(lambda r: r.start(timeout=240), replicas))
        schedulers.append(Scheduler(env, workdir, 1))
        log(f"replicas on {[r.port for r in replicas]}; scheduler pid {schedulers[0].process.pid}")
        events: list[str] = []

        async def faults(t0: float, length: float) -> None:
            loop = asyncio.get_running_loop()

            async def at(fraction: float) -> None:
                await asyncio.sleep(max(0.0, t0 + fraction * length - time.monotonic()))

            async def kill_replica() -> None:
                victim = replicas[-1]
                await at(0.35)
                victim.kill()
                note(f"SIGKILL replica :{victim.port}")
                await asyncio.sleep(5.0)
                await loop.run_in_executor(None, lambda: victim.start(timeout=240))
                note(f"replica :{victim.port} restarted")

            def note(what: str) -> None:
                events.append(f"{time.monotonic() - t0:.0f} s: {what}")
                log(events[-1])

            replica_fault = asyncio.create_task(kill_replica())
            await at(0.2)
            outage = await loop.run_in_executor(
                None, lambda: restart_postgres(str(make_url(args.server).port or 5432))
            )
            note(f"PostgreSQL restarted ({outage:.1f} s)")
            await at(0.65)
            # Catch the scheduler while it holds a lease (bounded wait), then SIGKILL it.
            old = schedulers[-1]
            holding = ""
            for _ in range(100):
                rows = await loop.run_in_executor(
                    None,
                    lambda: pg_query(
                        url,
                        "SELECT job, period, holder FROM job_runs WHERE status = 'running'",
                    ),
                )
                rows = [r for r in rows if str(r[2]).endswith(f":{old.process.pid}")]
                if rows:
                    holding = f" holding {rows[0][0]} {rows[0][1]}"
                    break
                await asyncio.sleep(0.05)
            old.kill()
            schedulers.append(Scheduler(env, workdir, len(schedulers) + 1))
            note(
                f"SIGKILL scheduler pid {old.process.pid}{holding};"
                f" started pid {schedulers[-1].process.pid}"
            )
            await replica_fault

        stats = Stats()
        bases = [r.base_url for r in replicas]
        log(f"driving for {duration:.0f} s{' with faults' if args.faults else ''}")
        elapsed = asyncio.run(
            drive(bases, seeded, duration, faults if args.faults else None, stats, args.seed)
        )
        # Let leases of killed holders lapse and a later firing take their runs over.
        time.sleep(15 if args.faults else 2)
        for s in schedulers:
            s.stop()
        for r in replicas:
            r.stop()
        report(stats, elapsed)
        if events:
            print("\nfaults:\n  " + "\n  ".join(events))
        failures = reconcile(url, stats, env, workdir)
        # The anchor measured here and now: bench/ingest.py's raw insert loop, same database.
        from ingest import raw_insert_rate

        raw = raw_insert_rate(url, rows=20_000)
        print(
            f"\nraw inserts/s (bench/ingest.py's executemany of the same reading rows, this "
            f"machine, this database, after the run): {raw:,.0f}; readings/s sent in the load: "
            f"{stats.sent_entries / elapsed:,.1f}"
        )
        print(f"\n{'PASS' if not failures else 'FAIL: ' + ', '.join(failures)}")
    finally:
        for s in schedulers:
            s.kill()
        for r in replicas:
            r.kill()
        try:
            pg_admin(args.server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception as exc:
            log(f"could not drop {name}: {exc!r}")
        if args.keep or failures:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
