"""The in-process loop worker: drains the ingest hand-off and escalates overdue alerts."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from app.core import clock
from loops import service
from loops.dispatch import drain
from mlops import serving

log = logging.getLogger("clinaiops.loop")


class LoopWorker:
    """A daemon thread that evaluates patients with new readings every `interval` seconds.

    Several server processes may each run one: on PostgreSQL the outbox rows are claimed
    with SKIP LOCKED, so each hand-off is evaluated once. (Daily runs and other scheduled jobs
    belong to the scheduler, which runs them under a database lease.)
    """

    def __init__(
        self, factory: sessionmaker[Session], *, interval: float, debounce: timedelta
    ) -> None:
        self.factory = factory
        self.interval = interval
        self.debounce = debounce
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clinaiops-loop", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to finish its pass and wait for it."""
        self._stop.set()
        self._thread.join(timeout)

    def tick(self) -> None:
        """One pass: evaluate due patients, escalate overdue alerts."""
        now = clock.utcnow()
        report = drain(self.factory, now=now, predictor=serving.production, debounce=self.debounce)
        with self.factory() as session:
            escalated = service.escalate_due(session, now=now)
            session.commit()
        if report.evaluated or report.failed or escalated:
            log.info(
                "loop pass: %d evaluated, %d failed, %d escalated",
                len(report.evaluated),
                len(report.failed),
                len(escalated),
            )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception as exc:  # keep serving; the next pass retries
                log.error("loop pass failed: %s", type(exc).__name__)
