"""`clinaiops` with two test jobs added to the registry, for the scheduler's process tests:
`python -m tests.validation.scheduler_probe scheduler`.

- `probe` fires every 2 s; each run appends `probe <period> <pid>` to $PROBE_FILE.
- `slow` runs once a day from 00:00, looked at every second; its run appends
  `slow-start <period> <pid>`, sleeps $SLOW_SECONDS, then appends `slow-done <period> <pid>`.

Everything else is the real command: the CLI, the registry's other jobs, the scheduler.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from app.core.config import Settings
from validation import jobs
from validation.jobs import Job, JobContext, Schedule

_registry = jobs.registry


def _append(line: str) -> None:
    # One short write on an O_APPEND file: lines of concurrent processes never interleave.
    with Path(os.environ["PROBE_FILE"]).open("a") as out:
        out.write(f"{line}\n")


def probe(ctx: JobContext) -> dict[str, Any]:
    """The side effect counted per period."""
    _append(f"probe {ctx.period} {os.getpid()}")
    return {"pid": os.getpid()}


def slow(ctx: JobContext) -> dict[str, Any]:
    """A run long enough to kill its process in the middle."""
    _append(f"slow-start {ctx.period} {os.getpid()}")
    time.sleep(float(os.environ.get("SLOW_SECONDS", "0")))
    _append(f"slow-done {ctx.period} {os.getpid()}")
    return {"pid": os.getpid()}


def registry(settings: Settings) -> dict[str, Job]:
    """The real jobs plus the two test jobs."""
    found = _registry(settings)
    lease = timedelta(seconds=settings.job_lease_seconds)
    found["probe"] = Job("probe", "test: count runs", Schedule.interval(2), lease, probe)
    found["slow"] = Job(
        "slow", "test: a long run", Schedule.daily(0, recheck_seconds=1), lease, slow
    )
    return found


jobs.registry = registry  # type: ignore[assignment]

if __name__ == "__main__":
    from app.cli import main

    main()
