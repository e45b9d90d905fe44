"""Nothing lost, nothing doubled: concurrent resends and a server killed mid-transaction.

These run the real server process against this test's database (SQLite or PostgreSQL).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import Engine, func, select

from app.db import session_factory
from device_ingest.models import Reading
from tests.conftest import World
from tests.ingest.conftest import FHIR, bp, bundle
from tests.live_server import LiveServer, clean_env

pytestmark = pytest.mark.slow


@pytest.fixture
def server(db_url: str, tmp_path: Path, world: World) -> Iterator[LiveServer]:
    """`clinaiops serve` on this test's database."""
    env = clean_env(
        CLINAIOPS_ENVIRONMENT="test",
        CLINAIOPS_DATABASE_URL=db_url,
        CLINAIOPS_DATA_DIR=str(tmp_path),
        CLINAIOPS_SIGNING_KEY_PATH=str(world.settings.signing_key_path),
    )
    live = LiveServer(["serve"], env, tmp_path)
    live.start()
    try:
        yield live
    finally:
        live.stop()


def _readings(engine: Engine, device_id: str) -> int:
    with session_factory(engine)() as s:
        return int(
            s.scalar(
                select(func.count()).select_from(Reading).where(Reading.device_id == device_id)
            )
            or 0
        )


def _series(n: int, start: datetime) -> list[dict[str, object]]:
    return [
        bp(100 + i % 60, 60 + i % 25, (start + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ"))
        for i in range(n)
    ]


def test_concurrent_resends_when_same_keys_store_each_reading_once(
    server: LiveServer, world: World, engine: Engine
) -> None:
    device_id, key = world.device("pa1")
    readings = _series(1000, datetime(2026, 1, 1, tzinfo=UTC))
    batches = [
        (f"batch-{i}", json.dumps(bundle("batch", readings[i * 100 : (i + 1) * 100])))
        for i in range(10)
    ]
    answers: dict[str, set[str]] = {k: set() for k, _ in batches}
    errors: list[str] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        order = batches[:]
        random.Random(seed).shuffle(order)
        with httpx2.Client(base_url=server.base_url, timeout=60.0) as http:
            for idem, body in order:
                r = http.post(
                    "/api/v1/device/observations",
                    content=body,
                    headers={
                        "Authorization": f"Bearer {key}",
                        "Content-Type": FHIR,
                        "Idempotency-Key": idem,
                    },
                )
                with lock:
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                    else:
                        answers[idem].add(r.text)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == []
    assert _readings(engine, device_id) == 1000
    # Every retry with a key got the very answer its first request got.
    assert all(len(texts) == 1 for texts in answers.values())


def test_kill_when_mid_transaction_leaves_all_or_none(
    server: LiveServer, world: World, engine: Engine
) -> None:
    for attempt, delay in enumerate((0.15, 0.4, 0.8)):
        device_id, key = world.device("pa1")
        start = datetime(2026, 2, 1, tzinfo=UTC) + timedelta(days=attempt * 10)
        body = json.dumps(bundle("transaction", _series(5000, start)))
        outcome: dict[str, object] = {}

        def send(body: str = body, key: str = key, outcome: dict[str, object] = outcome) -> None:
            try:
                r = httpx2.post(
                    f"{server.base_url}/api/v1/device/observations",
                    content=body,
                    headers={"Authorization": f"Bearer {key}", "Content-Type": FHIR},
                    timeout=60.0,
                )
                outcome["status"] = r.status_code
            except httpx2.TransportError as exc:
                outcome["error"] = type(exc).__name__

        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(delay)
        server.kill()
        sender.join(timeout=60)
        server.start()
        stored = _readings(engine, device_id)
        assert stored in (0, 5000), f"attempt {attempt}: {stored} of 5000 stored"
        if outcome.get("status") == 200:
            assert stored == 5000
