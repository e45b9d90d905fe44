"""Fixtures for the loop tests: a patient on a ladder with an envelope, stored readings,
and a predictor stub."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pytest

from app.core import clock
from device_ingest import service as devices
from device_ingest.models import DeviceClass, IngestBatch, Reading
from loops import service
from loops.flows import Explanation
from loops.models import MedicationRegimen
from mlops.features import FeatureVector
from policies.envelope import TitrationAction, default_rules
from tests.conftest import World


@dataclass
class StubPredictor:
    """Always proposes the same action with the same confidence."""

    action: TitrationAction
    confidence: float = 0.9
    label: str = "stub:v1"

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        probs = np.full(3, (1 - self.confidence) / 2)
        probs[
            [TitrationAction.DECREASE, TitrationAction.HOLD, TitrationAction.INCREASE].index(
                self.action
            )
        ] = self.confidence
        return np.tile(probs, (len(x), 1))

    def explain_many(
        self,
        x: np.ndarray,
        actions: Sequence[TitrationAction],
        features: Sequence[FeatureVector],
    ) -> list[Explanation]:
        return [
            Explanation(
                {"cuff_sbp_mean_7d": 1.2},
                "Home SBP is above target.",
                "Your readings are above your target.",
            )
            for _ in actions
        ]


@pytest.fixture
def patient(world: World) -> tuple[str, MedicationRegimen]:
    """pa1 on amlodipine step 0 with the demo envelope."""
    s = world.session
    ladder = service.create_ladder(s, drug="amlodipine", steps=[2.5, 5.0, 10.0])
    pid = world.patients["pa1"].id
    regimen = service.start_regimen(
        s,
        patient_id=pid,
        ladder=ladder,
    )
    regimen.started_at = regimen.last_changed_at = clock.utcnow() - timedelta(days=60)
    service.add_envelope_version(
        s,
        patient_id=pid,
        rules=default_rules(3),
        author_id=world.users["clina"].id or 0,
        reason="start",
        effective_at=clock.utcnow() - timedelta(days=30),
    )
    world.session.get(type(world.patients["pa1"]), pid).created_at = (  # type: ignore[union-attr]
        clock.utcnow() - timedelta(days=90)
    )
    s.commit()
    return pid, regimen


@pytest.fixture
def readings(world: World) -> Callable[..., None]:
    """Store validated-cuff (or other) BP readings for pa1, twice a day for `days` days."""

    def add(
        sbp: float,
        dbp: float,
        *,
        days: int = 7,
        per_day: int = 2,
        device_class: DeviceClass = DeviceClass.VALIDATED_CUFF,
        now: datetime | None = None,
    ) -> None:
        s = world.session
        pid = world.patients["pa1"].id
        device, _ = devices.register(s, patient_id=pid, device_class=device_class)
        now = now or clock.utcnow()
        batch = IngestBatch(
            device_id=device.id,
            patient_id=pid,
            received_at=now,
            content_type="x",
            source_format="fhir",
            body_sha256="0" * 64,
            body_bytes=0,
            entries=days * per_day,
        )
        s.add(batch)
        s.flush()
        for d in range(days):
            for k in range(per_day):
                t = now - timedelta(days=d, hours=2 + 10 * k)
                s.add(
                    Reading(
                        patient_id=pid,
                        device_id=device.id,
                        batch_id=batch.id or 0,
                        device_class=device_class,
                        kind="blood_pressure",
                        code="85354-9",
                        effective_start=t,
                        effective_precision="second",
                        effective_raw=t.isoformat(),
                        systolic=sbp,
                        diastolic=dbp,
                        unit="mm[Hg]",
                        status="accepted",
                        quarantine_reasons=[],
                        source_format="fhir",
                        payload_sha256="0" * 64,
                        received_at=t,
                        natural_key=f"{device.id}-{d}-{k}",
                    )
                )
        s.commit()

    return add
