"""The in-process worker evaluates new readings on its own, once per burst."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from app.core.config import Settings
from app.db import session_factory
from app.main import create_app
from loops.models import Evaluation, MedicationRegimen
from tests.conftest import World
from tests.ingest.conftest import FHIR, at, bp, bundle


def test_worker_when_readings_arrive_evaluates_the_patient(
    engine: Engine,
    settings: Settings,
    world: World,
    patient: tuple[str, MedicationRegimen],
    readings: Callable[..., None],
) -> None:
    pid, _ = patient
    readings(130, 80)
    _, key = world.device("pa1")
    app = create_app(
        settings.model_copy(update={"loop_worker_seconds": 0.1, "loop_debounce_seconds": 0.0}),
        engine,
    )
    with TestClient(app) as client:
        r = client.post(
            "/api/v1/device/observations",
            content=json.dumps(bundle("batch", [bp(when=at(2))])),
            headers={"Authorization": f"Bearer {key}", "Content-Type": FHIR},
        )
        assert r.status_code == 200
        deadline = time.monotonic() + 15
        count = 0
        while time.monotonic() < deadline and count == 0:
            time.sleep(0.1)
            with session_factory(engine)() as s:
                count = (
                    s.scalar(
                        select(func.count())
                        .select_from(Evaluation)
                        .where(Evaluation.patient_id == pid)
                    )
                    or 0
                )
    assert count == 1
