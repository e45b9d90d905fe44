"""Fail-fast settings, read from the environment with the prefix CLINAIOPS_."""

from __future__ import annotations

import logging
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

DEFAULT_SECRET = "change-me-dev-only-secret-key-0000"  # noqa: S105 - a sentinel, refused in production


class Environment(StrEnum):
    """Where the service runs; only dev/demo/test accept development defaults."""

    DEV = "dev"
    DEMO = "demo"
    TEST = "test"
    PRODUCTION = "production"


class Settings(BaseSettings):
    """Every tunable of the service; invalid combinations refuse to load."""

    # "none" in an environment variable stands for an unset optional value (e.g. =none turns
    # the daily evaluation off).
    model_config = SettingsConfigDict(
        env_prefix="CLINAIOPS_", env_file=None, extra="ignore", env_parse_none_str="none"
    )

    environment: Environment = Environment.PRODUCTION
    data_dir: Path = Path("var")
    database_url: str = ""
    sqlite_synchronous: str = "FULL"
    secret_key: str = DEFAULT_SECRET
    signing_key_path: Path | None = None

    access_token_minutes: Annotated[int, Field(ge=1, le=240)] = 15
    clock_skew_seconds: Annotated[int, Field(ge=0, le=300)] = 30
    jwt_issuer: str = "clinaiops"

    # Login throttling: after `login_throttle_after` failures each further attempt must wait
    # 2^(k - after) seconds (capped); at `lockout_threshold` failures the account is locked.
    login_throttle_after: Annotated[int, Field(ge=1)] = 3
    login_throttle_max_seconds: Annotated[int, Field(ge=1)] = 60
    lockout_threshold: Annotated[int, Field(ge=2)] = 6
    lockout_minutes: Annotated[int, Field(ge=1)] = 15

    session_idle_minutes: Annotated[int, Field(ge=1, le=120)] = 15
    session_max_hours: Annotated[int, Field(ge=1, le=24)] = 12
    cookie_secure: bool = True

    # GET /metrics answers only `Authorization: Bearer <metrics_token>` (at least 32
    # characters); unset, it refuses every scrape (docs/metrics.md).
    metrics_token: str | None = None

    max_body_bytes: Annotated[int, Field(ge=1024)] = 8 * 1024 * 1024
    # Requests served at once per process (the rest queue); must stay below the thread pool.
    max_concurrent_requests: Annotated[int, Field(ge=1, le=1000)] = 32
    thread_pool_size: Annotated[int, Field(ge=2, le=2000)] = 64
    # Python's cyclic GC young-generation threshold for server processes (default 700).
    gc_gen0_threshold: Annotated[int, Field(ge=700, le=1_000_000)] = 50_000
    # The in-process loop worker: seconds between passes over new readings (0: off), and how
    # long a patient's readings may keep arriving before one evaluation covers the burst.
    loop_worker_seconds: Annotated[float, Field(ge=0, le=3600)] = 5.0
    loop_debounce_seconds: Annotated[float, Field(ge=0, le=3600)] = 30.0
    # Scheduled jobs (validation/jobs.py, docs/scheduler.md). Each firing runs once across
    # every scheduler process and replica: the first to claim the job's period in the database
    # (a job lease) runs it. The lease is renewed every third of `job_lease_seconds` while the
    # job runs; a holder that dies stops renewing, and after this long another takes over.
    # The server process runs a scheduler of its own while `scheduler_in_process` is on and
    # its loop worker runs (`loop_worker_seconds` above 0); `clinaiops scheduler` is one more.
    scheduler_in_process: bool = True
    job_lease_seconds: Annotated[int, Field(ge=2, le=86_400)] = 300
    # A daily job fires at its UTC hour and then every `daily_job_recheck_seconds` until
    # midnight, so a server started later in the day, a failed run (up to three attempts) or
    # a dead holder's lapsed lease is taken up the same day; a done day is skipped.
    daily_job_recheck_seconds: Annotated[int, Field(ge=1, le=3600)] = 600
    # The daily evaluation of every patient, from this UTC hour, once a day; None turns its
    # schedule off (`clinaiops jobs run daily_evaluation` still runs it).
    daily_evaluation_hour_utc: Annotated[int | None, Field(ge=0, le=23)] = 6
    # The daily recompute of every patient's next visit (the cadence rule) and care plan
    # versions; None: off. Urgent alerts pull a visit forward at any hour (the loop worker).
    visit_cadence_hour_utc: Annotated[int | None, Field(ge=0, le=23)] = 5
    # The drift report over the last 7 days, daily from this UTC hour; None: off.
    drift_report_hour_utc: Annotated[int | None, Field(ge=0, le=23)] = 2
    # The full audit log verification, daily from this UTC hour; None: off.
    audit_verify_hour_utc: Annotated[int | None, Field(ge=0, le=23)] = 3
    # A signed tree head over the audit log every this many seconds; None: off.
    audit_checkpoint_seconds: Annotated[int | None, Field(ge=1, le=86_400)] = 3600
    # Retraining when mlops.retrain.retrain_due says so, daily from this UTC hour (after the
    # drift report, whose alert is one reason); None: off. The candidate waits for the gates.
    retraining_hour_utc: Annotated[int | None, Field(ge=0, le=23)] = 4
    # The monthly compliance pack (reports.pack) of the previous calendar month, from this
    # day of the month (1-28, so every month has it) at this UTC hour, once a month; a later
    # day catches up a missed one. Either None: off (`clinaiops reports pack` still runs it).
    compliance_pack_day: Annotated[int | None, Field(ge=1, le=28)] = 1
    compliance_pack_hour_utc: Annotated[int | None, Field(ge=0, le=23)] = 4
    # The validation gates on new candidates, every this many seconds; None: off.
    model_validation_seconds: Annotated[int | None, Field(ge=1, le=86_400)] = 900
    # One analysis of each running rollout (mlops.rollout.tick) every this many seconds: a
    # canary's breach is rolled back within one such cycle; None: off.
    rollout_analysis_seconds: Annotated[int | None, Field(ge=1, le=3600)] = 300
    # Overdue alerts escalate on this grid (seconds): the lateness of an escalation past its
    # severity's limit (15 minutes for a crisis) is at most this; None: off.
    alert_escalation_seconds: Annotated[int | None, Field(ge=1, le=3600)] = 60
    # Clinician review: a claim locks a proposal for one clinician this long (then lapses),
    # and a queued proposal should be decided within this many hours (the queue's target).
    review_claim_minutes: Annotated[int, Field(ge=1, le=240)] = 10
    review_target_hours: Annotated[int, Field(ge=1, le=720)] = 24
    # Device ingestion: a request holds at most this many readings (413 beyond).
    ingest_max_entries: Annotated[int, Field(ge=1, le=50_000)] = 5000
    # A reading dated further ahead than this is quarantined as implausible.
    ingest_max_future_minutes: Annotated[int, Field(ge=0, le=1440)] = 5
    # Quarantine readings older than this; off by default because devices back-fill history.
    ingest_max_age_days: Annotated[int | None, Field(ge=1)] = None
    password_min_length: Annotated[int, Field(ge=8)] = 10
    # Argon2id cost; tests lower it (argon2's own minimums still apply).
    argon2_time_cost: Annotated[int, Field(ge=1)] = 3
    argon2_memory_kib: Annotated[int, Field(ge=8)] = 65536
    # Private retraining (mlops/retrain.py, docs/privacy.md). Each data cohort has a total
    # privacy budget: the epsilons of every run on it add up (basic sequential composition;
    # their deltas add up too), and a run that would pass the budget is refused.
    privacy_budget_epsilon: Annotated[float, Field(gt=0, le=100)] = 10.0
    # The epsilon one retraining run aims for (an API or CLI argument may ask for another).
    retrain_target_epsilon: Annotated[float, Field(gt=0, le=20)] = 3.0
    retrain_accountant: Literal["rdp", "prv"] = "rdp"
    # A retraining is due after this many clinician decisions since the last snapshot.
    retrain_min_new_decisions: Annotated[int, Field(ge=1)] = 200
    # Data checks before training: the smallest usable snapshot.
    training_min_rows: Annotated[int, Field(ge=1)] = 100
    training_min_patients: Annotated[int, Field(ge=2)] = 100
    # Rows one patient may contribute to a snapshot of clinician decisions (the newest). At 1
    # the DP guarantee covers a whole patient; at k it covers a patient only by group privacy
    # (k times the epsilon; docs/privacy.md).
    training_max_rows_per_patient: Annotated[int, Field(ge=1, le=1000)] = 1

    # Validation gates a candidate model must pass (validation/gates.py,
    # docs/model-lifecycle.md): non-inferiority margins against the champion on the holdout
    # (log-loss in nats, by its 95% bootstrap upper bound; accuracy as a share, by its point
    # estimate), the largest expected calibration error, the largest accuracy gap of a
    # subgroup below the overall (subgroups of at least `gate_min_subgroup_rows` rows).
    gate_nll_margin: Annotated[float, Field(ge=0, le=1)] = 0.15
    gate_accuracy_margin: Annotated[float, Field(ge=0, le=1)] = 0.05
    gate_max_ece: Annotated[float, Field(gt=0, le=1)] = 0.08
    gate_max_subgroup_gap: Annotated[float, Field(ge=0, le=1)] = 0.10
    gate_min_subgroup_rows: Annotated[int, Field(ge=1)] = 30
    # Model rollout (mlops/rollout.py, docs/model-lifecycle.md): how long each step (shadow,
    # then the canary at 10, 25, 50 and 100% of patients) runs before its analysis may
    # advance it; a breach rolls back at the next analysis whatever the dwell.
    canary_dwell_minutes: Annotated[int, Field(ge=1, le=43_200)] = 60
    # The live analysis of each step (mlops/canary.py): how much evidence a check needs before
    # it is judged, and what counts as a breach (a breach rolls back at once). A small clinic
    # lowers the minimum counts or lengthens the dwell; docs/model-lifecycle.md#canary.
    canary_min_scored: Annotated[int, Field(ge=1)] = 20
    canary_min_decided: Annotated[int, Field(ge=1)] = 20
    canary_max_override_increase: Annotated[float, Field(ge=0, le=1)] = 0.10
    canary_min_proposals: Annotated[int, Field(ge=1)] = 20
    canary_max_mix_shift: Annotated[float, Field(ge=0, le=1)] = 0.20
    canary_max_error_increase: Annotated[float, Field(ge=0, le=1)] = 0.02
    canary_min_latency_samples: Annotated[int, Field(ge=1)] = 20
    canary_max_latency_ratio: Annotated[float, Field(ge=1, le=100)] = 2.0
    canary_latency_slack_ms: Annotated[float, Field(ge=0, le=10_000)] = 5.0

    @model_validator(mode="after")
    def _fail_fast(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'clinaiops.db').as_posix()}"
        if self.signing_key_path is None:
            self.signing_key_path = self.data_dir / "audit_signing_key.pem"
        relaxed = self.environment in {Environment.DEV, Environment.DEMO, Environment.TEST}
        if self.secret_key == DEFAULT_SECRET and not relaxed:
            raise ValueError(
                "CLINAIOPS_SECRET_KEY is the development default; set a random secret "
                "(at least 32 characters) or CLINAIOPS_ENVIRONMENT=dev|demo"
            )
        if len(self.secret_key) < 32:
            raise ValueError("CLINAIOPS_SECRET_KEY must be at least 32 characters")
        if self.environment is Environment.PRODUCTION and not self.cookie_secure:
            raise ValueError("CLINAIOPS_COOKIE_SECURE must stay on in production")
        if self.max_concurrent_requests >= self.thread_pool_size:
            raise ValueError(
                "CLINAIOPS_MAX_CONCURRENT_REQUESTS must be below "
                "CLINAIOPS_THREAD_POOL_SIZE (see app/core/middleware.py)"
            )
        if self.metrics_token is not None and len(self.metrics_token) < 32:
            raise ValueError("CLINAIOPS_METRICS_TOKEN must be at least 32 characters")
        if self.sqlite_synchronous.upper() not in {"FULL", "NORMAL", "EXTRA"}:
            raise ValueError("CLINAIOPS_SQLITE_SYNCHRONOUS must be FULL, NORMAL or EXTRA")
        return self

    @property
    def is_sqlite(self) -> bool:
        """True when the database is SQLite."""
        return self.database_url.startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Load settings once per process (tests clear the cache)."""
    return Settings()
