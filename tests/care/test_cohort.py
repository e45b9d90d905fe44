"""Goal progress on a fixed, hand-built cohort, checked against values computed by hand.

NOW is 2026-11-15 18:00 UTC. "The last 7 days" are 9-15 November, "the last 28 days"
19 October - 15 November (UTC days, up to NOW).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from device_ingest.models import DeviceClass
from loops.care import service
from loops.care.models import GoalKind
from tests.care.conftest import NOW, Data, api, at
from tests.conftest import FrozenClock, World


def _goal(call: Any, path: str, body: dict[str, Any]) -> str:
    r = call("POST", path, json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _agree(call: Any, path: str) -> None:
    r = call("POST", path)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "agreed"


def _by_kind(goals: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {g["kind"]: g["progress"] for g in goals}


def test_cohort_bp_when_hand_computed_matches(
    client: TestClient, world: World, data: Data, fixed_clock: FrozenClock
) -> None:
    clina, pa1 = api(client, world, "clina"), api(client, world, "pa1")
    pid = world.patients["pa1"].id
    data.bp(
        "pa1",
        [
            (at(15, 7), 124, 76),  # 15 Nov: day mean 126/78 -> within 130/80
            (at(15, 17), 128, 80),
            (at(15, 19), 170, 100),  # after NOW: not counted
            (at(14, 7), 132, 84),  # 14 Nov: day mean 129/82 -> DBP not below 80
            (at(14, 19), 126, 80),
            (at(13, 7), 122, 74),  # 13 Nov: within
            (at(12, 7), 138, 88),  # 12 Nov: not within
            (at(8, 7), 120, 70),  # 8 Nov: outside the 7 days, inside the 28; within
            (datetime(2026, 10, 18, 7, tzinfo=UTC), 118, 70),  # outside the 28 days
        ],
    )
    data.bp("pa1", [(at(11, 12), 180, 110)], device_class=DeviceClass.CUFFLESS_WEARABLE)
    data.bp("pa1", [(at(10, 7), 250, 150)], status="quarantined")
    goal = _goal(
        clina,
        f"/api/v1/patients/{pid}/goals",
        {"kind": "blood_pressure", "target_systolic": 130, "target_diastolic": 80},
    )
    _agree(pa1, f"/api/v1/me/goals/{goal}/agree")

    progress = _by_kind(pa1("GET", "/api/v1/me/goals").json())["blood_pressure"]
    # 7 days: 124, 128, 132, 126, 122, 138 -> 770 / 6 = 128.33 systolic;
    #         76, 80, 84, 80, 74, 88 -> 482 / 6 = 80.33 diastolic (cuffless 180/110,
    #         quarantined 250/150 and the 19:00 reading after NOW are excluded).
    assert progress["value"] == 128.3
    assert progress["value_diastolic"] == 80.3
    assert progress["count"] == 6
    assert progress["days_with_data"] == 4  # 12, 13, 14, 15 Nov
    # 128.3 < 130 but 80.3 >= 80: not within target.
    assert progress["met"] is False
    # 28 days: 8, 12, 13, 14, 15 Nov have readings; 8, 13, 15 within -> 3 of 5.
    assert (progress["days_28"], progress["days_meeting_28"]) == (5, 3)
    assert progress["share_meeting_28"] == 0.6
    # Rounded, 80.3 would read as the target itself: it is shown to a tenth.
    assert progress["sentence"].startswith("Home blood pressure averaged 128/80.3 mmHg")
    # The care team sees the same figures.
    same = _by_kind(clina("GET", f"/api/v1/patients/{pid}/goals").json())["blood_pressure"]
    assert same == progress


def test_cohort_steps_and_adherence_when_hand_computed_match(
    client: TestClient, world: World, data: Data, fixed_clock: FrozenClock
) -> None:
    clina, pa2 = api(client, world, "clina"), api(client, world, "pa2")
    pid = world.patients["pa2"].id
    data.steps(
        "pa2",
        [
            (at(15, 9), 3000),  # 15 Nov: 3,000 + 5,000 = 8,000
            (at(15, 16), 5000),
            (at(15, 20), 4000),  # after NOW
            (at(14, 12), 6500),
            (at(13, 12), 7200),
            (at(11, 12), 10000),
            (at(1, 12), 9000),  # outside the 7 days, inside the 28
        ],
    )
    data.steps("pa2", [(at(12, 12), 90000)], status="quarantined")
    # Doses 6-15 Nov at 08:00, missed on 7 and 12 Nov; one missed 36 days back (outside) and
    # one taken after NOW (not counted).
    data.doses(
        "pa2",
        [(at(d, 8), d not in (7, 12)) for d in range(6, 16)]
        + [(datetime(2026, 10, 10, 8, tzinfo=UTC), False), (at(15, 20), True)],
    )
    steps = _goal(pa2, "/api/v1/me/goals", {"kind": "daily_steps", "target_value": 7000})
    adherence = _goal(pa2, "/api/v1/me/goals", {"kind": "adherence", "target_value": 0.8})
    _agree(clina, f"/api/v1/goals/{steps}/agree")
    _agree(clina, f"/api/v1/goals/{adherence}/agree")

    got = _by_kind(clina("GET", f"/api/v1/patients/{pid}/goals").json())
    # Steps, 7 days: 15 Nov 8,000, 14 Nov 6,500, 13 Nov 7,200, 11 Nov 10,000
    # -> 31,700 / 4 = 7,925 >= 7,000: met. 28 days: those 4 plus 1 Nov (9,000) = 5 days;
    # at least 7,000 on 8,000, 7,200, 10,000, 9,000 -> 4.
    assert got["daily_steps"]["value"] == 7925.0
    assert got["daily_steps"]["met"] is True
    assert got["daily_steps"]["days_with_data"] == 4
    assert (got["daily_steps"]["days_28"], got["daily_steps"]["days_meeting_28"]) == (5, 4)
    # Adherence, 28 days: 10 doses, 8 taken -> 0.8 >= 0.8: met.
    assert got["adherence"]["value"] == 0.8
    assert got["adherence"]["count"] == 10
    assert got["adherence"]["met"] is True
    assert got["adherence"]["sentence"].startswith("80% of doses were taken")


def test_cohort_logs_when_hand_computed_match(
    client: TestClient, world: World, fixed_clock: FrozenClock
) -> None:
    clinb, pb1 = api(client, world, "clinb"), api(client, world, "pb1")
    pid = world.patients["pb1"].id
    sodium = _goal(clinb, f"/api/v1/patients/{pid}/goals", {"kind": "sodium", "target_value": 2000})
    sleep = _goal(clinb, f"/api/v1/patients/{pid}/goals", {"kind": "sleep", "target_value": 7})
    _agree(pb1, f"/api/v1/me/goals/{sodium}/agree")
    _agree(pb1, f"/api/v1/me/goals/{sleep}/agree")
    for goal, day, value in [
        (sodium, 15, 1800),
        (sodium, 14, 3000),
        (sodium, 14, 2400),  # replaces 3,000 for 14 Nov
        (sodium, 13, 2100),
        (sodium, 12, 1900),
        (sleep, 15, 7.5),
        (sleep, 14, 6),
        (sleep, 13, 8),
        (sleep, 12, 7),
        (sleep, 10, 6.5),
    ]:
        r = pb1(
            "POST", f"/api/v1/me/goals/{goal}/logs", json={"day": f"2026-11-{day}", "value": value}
        )
        assert r.status_code in (200, 201), r.text

    got = _by_kind(pb1("GET", "/api/v1/me/goals").json())
    # Sodium: (1,800 + 2,400 + 2,100 + 1,900) / 4 = 2,050 > 2,000: not met;
    # at most 2,000 on 1,800 and 1,900 -> 2 of 4 days.
    assert got["sodium"]["value"] == 2050.0
    assert got["sodium"]["met"] is False
    assert (got["sodium"]["days_28"], got["sodium"]["days_meeting_28"]) == (4, 2)
    # Sleep: (7.5 + 6 + 8 + 7 + 6.5) / 5 = 7.0 >= 7: met; at least 7 on 7.5, 8, 7 -> 3 of 5.
    assert got["sleep"]["value"] == 7.0
    assert got["sleep"]["met"] is True
    assert (got["sleep"]["days_28"], got["sleep"]["days_meeting_28"]) == (5, 3)


def test_cohort_service_when_called_directly_agrees_with_api(
    world: World, data: Data, fixed_clock: FrozenClock
) -> None:
    s = world.session
    pid = world.patients["pa1"].id
    data.bp("pa1", [(at(d, 7), 120 + d, 70) for d in range(9, 16)])
    goal = service.propose_goal(
        s,
        patient_id=pid,
        kind=GoalKind.BLOOD_PRESSURE,
        target_value=None,
        target_systolic=135,
        target_diastolic=85,
        note="",
        side=service.Side.CLINICIAN,
        user_id=world.users["clina"].id or 0,
        now=NOW,
    )
    found = service.goal_progress(s, patient_id=pid, goals=[goal], now=NOW)[goal.id]
    # 129 ... 135 systolic over 9-15 Nov: mean (129 + 135) / 2 = 132 < 135; diastolic 70.
    assert found.value == pytest.approx(132.0)
    assert found.met is True
    s.rollback()
