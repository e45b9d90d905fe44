"""The review queue: risk order, scope, targets, and a fixed number of queries."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from app.auth.principal import AuthMethod, Principal, PrincipalKind
from app.core import clock
from app.patients import service as patients
from app.patients.models import Sex
from loops.models import Alert, MedicationRegimen, Proposal
from loops.review import service as review
from policies import service as policy
from tests.conftest import World


def policy_principal(world: World) -> Principal:
    """clina as the enforcement point sees her."""
    user = world.users["clina"]
    return Principal(PrincipalKind.USER, str(user.id), "clinician", AuthMethod.BEARER)


def _more_patients(world: World, regimens: dict[str, MedicationRegimen], n: int) -> list[str]:
    """Add patients pa3.. to team A, on pa1's ladder at step 1."""
    ladder_id = regimens["pa1"].ladder_id
    keys = []
    for i in range(3, 3 + n):
        key = f"pa{i}"
        p = patients.register_patient(
            world.session,
            pseudonym=f"P-PA{i}",
            given_name=f"Given{key}",
            family_name=f"Family{key}",
            birth_date=date(1960, 1, 1),
            sex=Sex.MALE,
        )
        patients.add_patient(world.session, team=world.teams["A"], patient=p)
        world.patients[key] = p
        regimens[key] = MedicationRegimen(patient_id=p.id, ladder_id=ladder_id, current_step=1)
        world.session.add(regimens[key])
        keys.append(key)
    world.session.commit()
    return keys


def test_risk_score_when_tiers_compete_ranks_crisis_then_alert_then_high_increase() -> None:
    def base(crisis_alert: bool, other_alerts: int) -> int:
        return review.risk_score(
            crisis_alert=crisis_alert,
            other_alerts=other_alerts,
            action="increase",
            sbp_mean_7d=140.0,
            dbp_mean_7d=85.0,
        )

    crisis, alert = base(True, 0), base(False, 1)
    high = review.risk_score(
        crisis_alert=False, other_alerts=0, action="increase", sbp_mean_7d=150.0, dbp_mean_7d=80.0
    )
    other = base(False, 0)
    decrease = review.risk_score(
        crisis_alert=False, other_alerts=0, action="decrease", sbp_mean_7d=170.0, dbp_mean_7d=99.0
    )
    assert crisis > alert > high > other == decrease
    # The high-risk target (130/80) lowers the bar by 5/5 mmHg.
    assert (
        review.risk_score(
            crisis_alert=False,
            other_alerts=0,
            action="increase",
            sbp_mean_7d=146.0,
            dbp_mean_7d=None,
            diabetes_or_ckd=True,
        )
        == 1
    )


def test_queue_when_risks_differ_orders_by_risk_then_age(
    client: TestClient,
    world: World,
    regimens: dict[str, MedicationRegimen],
    propose: Callable[..., Proposal],
    raise_alert: Callable[..., Alert],
) -> None:
    pa3, pa4, pa5 = _more_patients(world, regimens, 3)
    low_old = propose(pa4, sbp=140.0, age=timedelta(hours=30))
    low_new = propose(pa5, "decrease", sbp=170.0, age=timedelta(hours=2))
    high = propose(pa3, sbp=160.0, age=timedelta(hours=1))
    alerted = propose("pa2", age=timedelta(minutes=30))
    raise_alert("pa2", "data_gap", "low")
    crisis = propose("pa1", age=timedelta(minutes=5))
    raise_alert("pa1")
    other_team = propose("pb1")
    response = client.get("/api/v1/review/queue", headers=world.auth("clina"))
    assert response.status_code == 200
    body = response.json()
    assert body["total"] == 5
    ids = [i["proposal_id"] for i in body["items"]]
    assert ids == [crisis.id, alerted.id, high.id, low_old.id, low_new.id]
    assert [i["risk"] for i in body["items"]] == [3, 2, 1, 0, 0]
    assert [i["overdue"] for i in body["items"]] == [False, False, False, True, False]
    assert body["items"][0]["target_seconds"] == 24 * 3600
    assert body["items"][0]["drug"] == "lisinopril"
    page = client.get("/api/v1/review/queue?limit=2&offset=2", headers=world.auth("clina")).json()
    assert [i["proposal_id"] for i in page["items"]] == [high.id, low_old.id]
    theirs = client.get("/api/v1/review/queue", headers=world.auth("clinb")).json()
    assert [i["proposal_id"] for i in theirs["items"]] == [other_team.id]


def test_queue_when_read_is_audited_once(
    client: TestClient,
    world: World,
    propose: Callable[..., Proposal],
    count_audit: Callable[..., int],
) -> None:
    propose("pa1")
    before = count_audit(action="review.queue")
    assert client.get("/api/v1/review/queue", headers=world.auth("clina")).status_code == 200
    assert count_audit(action="review.queue", outcome="success") == before + 1


@contextmanager
def _count_queries(engine: Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def hook(*args: object) -> None:
        seen.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", hook)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", hook)


def test_queue_when_many_pending_runs_the_same_number_of_queries(
    world: World,
    engine: Engine,
    short: Callable[[], Session],
    regimens: dict[str, MedicationRegimen],
    propose: Callable[..., Proposal],
    raise_alert: Callable[..., Alert],
) -> None:
    principal = policy_principal(world)
    where = policy.patient_filter(principal, "proposal", "review")
    propose("pa1")
    raise_alert("pa1")
    with short() as s, _count_queries(engine) as few:
        items, _ = review.queue(s, patient_filter=where, now=clock.utcnow())
    assert len(items) == 1
    for key in _more_patients(world, regimens, 40):
        propose(key)
        propose(key, "decrease")
    with short() as s, _count_queries(engine) as many:
        items, total = review.queue(s, patient_filter=where, now=clock.utcnow(), limit=50)
    assert total == 81
    assert len(items) == 50
    assert len(many) == len(few)


def test_queue_when_claimed_shows_the_holder(
    world: World,
    short: Callable[[], Session],
    propose: Callable[..., Proposal],
) -> None:
    p = propose("pa1")
    now = clock.utcnow()
    with short() as s:
        review.claim(s, proposal_id=p.id, user=world.users["clina"], now=now)
        s.commit()
    where = policy.patient_filter(policy_principal(world), "proposal", "review")
    with short() as s:
        (item,), _ = review.queue(s, patient_filter=where, now=now)
        assert item.claimed_by == "Clina"
        assert item.claim is not None
        assert item.claim.expires_at == now + timedelta(minutes=10)
        (later,), _ = review.queue(s, patient_filter=where, now=now + timedelta(minutes=11))
        assert later.claim is None
        assert later.claimed_by is None
