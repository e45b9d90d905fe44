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
    # The daily evaluation of every patient: from this UTC hour on, once a day, by one
    # replica (a job lease in the database); None turns it off (run `clinaiops loop run
    # --daily` from cron instead). The lease lapses after `daily_run_lease_minutes`.
    daily_evaluation_hour_utc: Annotated[int | None, Field(ge=0, le=23)] = 6
    daily_run_lease_minutes: Annotated[int, Field(ge=1, le=1440)] = 120
    # The daily recompute of every patient's next visit (the cadence rule): from this UTC hour
    # on, once a day, by one replica (a job lease); None turns it off (run `clinaiops visits
    # recompute` from cron instead). Urgent alerts pull a visit forward at any hour.
    visit_cadence_hour_utc: Annotated[int | None, Field(ge=0, le=23)] = 5
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
    # Model rollout (mlops/rollout.py, docs/model-lifecycle.md): how long each step (shadow,
    # then the canary at 10, 25, 50 and 100% of patients) runs before its analysis may
    # advance it; a breach rolls back at the next analysis whatever the dwell.
    canary_dwell_minutes: Annotated[int, Field(ge=1, le=43_200)] = 60

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
