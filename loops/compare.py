"""Usual care against the ClinAIOps loops on one simulated cohort (same patients, same noise).

Usual care: a clinician reviews every patient every 90 days and titrates by the protocol.
ClinAIOps: each week the loop scores the patient with the production model; the routing
function delivers what lies inside the envelope, and a simulated clinician decides the rest
by the protocol (accepting the proposal when it agrees, otherwise changing it). Both arms use
the same feature module, protocol, routing function and simulator as the running system.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta

import numpy as np

from device_ingest.simulator import Cohort
from loops.alerts import CuffReading, crisis
from loops.protocol import decide
from mlops.dataset import protocol_state, reading_point
from mlops.features import (
    DoseEvent,
    PatientFacts,
    ReadingPoint,
    RegimenFacts,
    SymptomPoint,
    compute_features,
)
from mlops.symptoms import day_reports
from policies.envelope import TitrationAction, default_rules
from policies.routing import Proposal, Route, route

ACTIONS = (TitrationAction.DECREASE, TitrationAction.HOLD, TitrationAction.INCREASE)
_DELTA = {TitrationAction.DECREASE: -1, TitrationAction.HOLD: 0, TitrationAction.INCREASE: 1}
Scorer = Callable[[np.ndarray], np.ndarray]  # feature rows -> class probabilities


@dataclass
class ArmResult:
    """One arm's outcomes."""

    name: str
    control_90: float = 0.0
    control_180: float = 0.0
    sbp_change: float = 0.0
    reviews_per_patient_month: float = 0.0
    automatic_changes: int = 0
    low_bp_events: int = 0
    crisis_alerts: int = 0
    minutes_to_acknowledge: float | None = None
    _ack: list[float] = field(default_factory=list)


def _controlled(cuff: deque[CuffReading], as_of: datetime) -> bool | None:
    week = [r for r in cuff if as_of - timedelta(days=7) <= r.time < as_of]
    if not week:
        return None
    return (
        float(np.mean([r.systolic for r in week])) < 130
        and float(np.mean([r.diastolic for r in week])) < 80
    )


def run_arm(
    name: str, *, n_patients: int, days: int, seed: int, scorer: Scorer | None
) -> ArmResult:
    """Simulate one arm; `scorer` None means usual care."""
    cohort = Cohort(n_patients, seed)
    rng = np.random.default_rng(seed + 1)
    result = ArmResult(name)
    steps = {p.pseudonym: p.start_step for p in cohort.patients}
    changed: dict[str, datetime | None] = {p.pseudonym: None for p in cohort.patients}
    auto_30: dict[str, deque[datetime]] = {p.pseudonym: deque() for p in cohort.patients}
    points = {p.pseudonym: deque[ReadingPoint]() for p in cohort.patients}
    doses = {p.pseudonym: deque[DoseEvent]() for p in cohort.patients}
    symptoms = {p.pseudonym: deque[SymptomPoint]() for p in cohort.patients}
    cuff = {p.pseudonym: deque[CuffReading]() for p in cohort.patients}
    first_week: dict[str, list[float]] = {p.pseudonym: [] for p in cohort.patients}
    reviews = 0
    for day in range(days):
        out = cohort.simulate_day(day, steps)
        as_of = datetime.combine(out.date + timedelta(days=1), time(), UTC)
        for r in out.readings():
            points[r.pseudonym].append(reading_point(r))
            if (
                r.device_kind == "validated_cuff"
                and not r.artifact
                and r.systolic is not None
                and r.diastolic is not None
            ):
                cuff[r.pseudonym].append(CuffReading(r.time, r.systolic, r.diastolic))
                if day < 7:
                    first_week[r.pseudonym].append(r.systolic)
        for e in out.medication_events():
            doses[e.pseudonym].append(DoseEvent(time=e.time, taken=e.taken))
        for name, report in day_reports(out, cohort.patients, seed=seed).items():
            symptoms[name].append(report.point())
        for patient in cohort.patients:
            name = patient.pseudonym
            for q in (points[name], doses[name], cuff[name], symptoms[name]):
                while q and q[0].time < as_of - timedelta(days=22):
                    q.popleft()
            today = [r for r in cuff[name] if r.time >= as_of - timedelta(days=1)]
            if today and np.mean([r.systolic for r in today]) < 100:
                result.low_bp_events += 1
            if scorer is not None:  # the loop watches every day: crises alert at once
                check = crisis(list(cuff[name]), now=as_of)
                if check.alert:
                    result.crisis_alerts += 1
                    result._ack.append(float(rng.uniform(5, 60)))
            review_day = (day % 90 == 89) if scorer is None else (day % 7 == 6)
            if not review_day or day < 13:
                continue
            fv = compute_features(
                readings=points[name],
                doses=doses[name],
                symptoms=symptoms[name],
                patient=PatientFacts(
                    sex=patient.sex, diabetes=patient.diabetes, ckd=patient.ckd, age=patient.age
                ),
                regimen=RegimenFacts(
                    step=steps[name], ladder_steps=len(patient.ladder_mg), last_change=changed[name]
                ),
                as_of=as_of,
            )
            protocol = decide(protocol_state(fv, patient, steps[name])).action
            if scorer is None:
                reviews += 1
                action = protocol
            else:
                if not fv.sufficient:
                    continue
                probs = scorer(fv.to_array()[None, :])[0]
                proposed = ACTIONS[int(np.argmax(probs))]
                while auto_30[name] and auto_30[name][0] < as_of - timedelta(days=30):
                    auto_30[name].popleft()
                decision = route(
                    Proposal(
                        proposed,
                        steps[name],
                        steps[name] + _DELTA[proposed],
                        float(np.max(probs)),
                        len(patient.ladder_mg),
                    ),
                    fv.to_evidence(auto_changes_30d=len(auto_30[name]), open_alerts=0),
                    default_rules(len(patient.ladder_mg)),
                    kill_switch=False,
                )
                if proposed is TitrationAction.HOLD:
                    action = proposed
                elif decision.route is Route.AUTO_DELIVER:
                    action = proposed
                    result.automatic_changes += 1
                    auto_30[name].append(as_of)
                else:  # the clinician decides by the protocol: approve, modify or reject
                    reviews += 1
                    action = protocol
            if action is not None and action is not TitrationAction.HOLD:
                target = steps[name] + _DELTA[action]
                if 0 <= target < len(patient.ladder_mg):
                    steps[name], changed[name] = target, as_of
        if day + 1 in (90, 180):
            states = [_controlled(cuff[p.pseudonym], as_of) for p in cohort.patients]
            known = [s for s in states if s is not None]
            share = sum(known) / len(known) if known else 0.0
            if day + 1 == 90:
                result.control_90 = share
            else:
                result.control_180 = share
    last = [
        np.mean([r.systolic for r in cuff[p.pseudonym]]) - np.mean(first_week[p.pseudonym])
        for p in cohort.patients
        if cuff[p.pseudonym] and first_week[p.pseudonym]
    ]
    result.sbp_change = float(np.mean(last)) if last else 0.0
    result.reviews_per_patient_month = reviews / n_patients / (days / 30)
    result.minutes_to_acknowledge = float(np.median(result._ack)) if result._ack else None
    return result


def table(arms: list[ArmResult]) -> str:
    """The comparison as a Markdown table."""
    rows: list[tuple[str, Callable[[ArmResult], str]]] = [
        ("home BP control (< 130/80) at 90 days", lambda a: f"{a.control_90:.0%}"),
        ("home BP control (< 130/80) at 180 days", lambda a: f"{a.control_180:.0%}"),
        ("mean home SBP change (mmHg)", lambda a: f"{a.sbp_change:+.1f}"),
        ("clinician reviews per patient-month", lambda a: f"{a.reviews_per_patient_month:.2f}"),
        ("automatic dose changes", lambda a: str(a.automatic_changes)),
        ("low-BP patient-days (daily cuff mean SBP < 100)", lambda a: str(a.low_bp_events)),
        ("crisis alerts raised", lambda a: str(a.crisis_alerts)),
        (
            "median minutes to acknowledge a crisis",
            lambda a: (
                "n/a"
                if a.minutes_to_acknowledge is None
                else f"{a.minutes_to_acknowledge:.0f} (simulated)"
            ),
        ),
    ]
    lines = [
        "| outcome | " + " | ".join(a.name for a in arms) + " |",
        "|---|" + "---:|" * len(arms),
    ]
    lines += [f"| {label} | " + " | ".join(f(a) for a in arms) + " |" for label, f in rows]
    return "\n".join(lines)
