"""The portal's model pages: the registry, the running or latest rollout with each step's
analysis, the serving history, the model alerts (red boxes, and a banner on the home page for
whoever may read models), the manual rollback under a re-entered password; every view and
refusal audited."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlmodel import col

from audit.models import AuditEntry
from loops.flows import Outcome
from mlops import rollout, serving
from mlops.models import Rollout, RolloutStatus
from mlops.serving import ServedModel
from tests.conftest import PASSWORD, FrozenClock, World
from tests.mlops.rollout_setup import Rig
from tests.portal.conftest import sign_in

MODELS = "/portal/models"
MODEL = "/portal/models/titration"
ROLLBACK = "/portal/models/titration/rollback"
BANNER = 'class="card model-alert model-banner"'


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving, "_cache", {})


@pytest.fixture
def rig(world: World, tmp_path: Path) -> Rig:
    """Champion v1 in production, challenger v2 validated and signed off."""
    return Rig(world, tmp_path, challenger_push=2.0)


def roll_back_automatically(rig: Rig) -> Rollout:
    """Shadow, canary 10%, then the challenger's inference fails: the next analysis rolls
    it back (error_rate), and its patients' evaluations end `model_unavailable`."""
    rig.to_canary()
    loaded = serving.load(rig.v2)
    assert loaded is not None

    class Raises(ServedModel):
        def predict_proba(self, x: np.ndarray) -> np.ndarray:
            raise RuntimeError("inference crashed")

    serving._cache[(loaded.label, rig.v2.artifact_sha256)] = Raises(loaded.label, loaded.model)
    rig.evaluate(12)
    (step,) = rig.tick(13)
    assert step.decision == "rollback"
    found = rig.rollout()
    rig.s.commit()
    assert found.end_reason.startswith(rollout.AUTOMATIC)
    return found


@pytest.fixture
def rolled_back(rig: Rig) -> Rollout:
    """A rollout rolled back automatically at canary 10% a moment ago."""
    return roll_back_automatically(rig)


def _entries(rig: Rig, action: str) -> list[AuditEntry]:
    rig.s.expire_all()
    found = list(rig.s.scalars(select(AuditEntry).where(col(AuditEntry.action) == action)))
    rig.s.commit()
    return found


def _details(entry: AuditEntry) -> dict[str, object]:
    return dict(json.loads(entry.details))


def _section(page: str, anchor: str) -> str:
    """The HTML of the page's <section id=anchor>."""
    match = re.search(rf'<section class="card" id="{anchor}">(.*?)</section>', page, re.S)
    assert match, f"no section {anchor}"
    return match.group(1)


# ------------------------------------------------------------------ the pages


def test_models_page_after_automatic_rollback_shows_red_alert_with_stored_reason(
    client: TestClient, rolled_back: Rollout, rig: Rig
) -> None:
    sign_in(client, "mleng")
    page = client.get(MODELS)
    assert page.status_code == 200
    text = page.text
    assert f'class="model-alert" role="alert" data-rollout="{rolled_back.id}"' in text
    assert "Automatic rollback: titration:v2</strong>\n    at canary 10%" in text
    assert f"<code>{html.escape(rolled_back.end_reason)}</code>" in text
    assert '<span class="badge bad">error rate</span>' in text
    assert "titration:v1 serves every patient" in text
    assert 'href="/portal/models" aria-current="page"' in text  # the nav link
    assert 'href="/portal/models/titration"' in text
    (entry,) = _entries(rig, "model.list")
    assert entry.outcome == "success"
    assert _details(entry) == {"count": 1, "rollback_alerts": 1, "serving_failures": 1}


def test_model_page_after_automatic_rollback_shows_steps_checks_versions_and_history(
    client: TestClient, rolled_back: Rollout, rig: Rig
) -> None:
    sign_in(client, "auditor")
    page = client.get(MODEL)
    assert page.status_code == 200
    text = page.text
    # The alert, and the patients the failing challenger sent to clinicians.
    assert f"<code>{html.escape(rolled_back.end_reason)}</code>" in text
    assert "Serving failure: titration:v2</strong>" in text
    rollout_html = _section(text, "rollout")
    assert "Latest rollout" in rollout_html
    assert f'<dd class="end-reason"><code>{html.escape(rolled_back.end_reason)}</code>' in text
    # Steps newest first: the canary's rollback, then the shadow's advance.
    steps = re.findall(r'data-step="(\d+)">\s*<h3>([^<]+)<span class="badge \w+">(\w+)', text)
    assert [(where.strip(), decision) for _, where, decision in steps] == [
        ("Canary 10%", "rollback"),
        ("Shadow", "advance"),
    ]
    canary = rollout_html.split('data-step="', 2)[1]
    assert '<tr data-check="error_rate" class="breached">' in canary
    assert "champion + 0.02" in canary  # the limit
    for check in ("override_rate", "routing_mix", "latency_p95_ms"):
        assert f'data-check="{check}"' in canary
    assert "needs 1000 samples per model" in canary  # latency: not judged, and why
    # The registry and the serving history.
    versions = _section(text, "versions")
    assert re.search(r'data-version="1">.*?production.*?champion', versions, re.S)
    assert re.search(r'data-version="2">.*?retired', versions, re.S)
    history = _section(text, "history")
    assert re.search(r'data-interval="1">.*?serving', history, re.S)
    assert 'id="rollback"' not in text  # auditors cannot roll back
    (entry,) = _entries(rig, "model.read")
    assert (entry.resource_type, entry.resource_id) == ("model", "titration")
    assert _details(entry) == {
        "rollout_id": rolled_back.id,
        "rollback_alerts": 1,
        "serving_failures": 1,
    }


def test_model_page_while_canary_runs_shows_live_analysis_and_no_alert(
    client: TestClient, rig: Rig
) -> None:
    rig.to_canary()
    sign_in(client, "mleng")
    text = client.get(MODEL).text
    assert "Running rollout" in text
    assert 'data-step="live"' in text
    assert "live, as of now" in text
    assert "titration:v2 (challenger)" in text
    assert "No automatic rollback and no serving failure." in text
    assert BANNER not in client.get("/portal/").text
    assert "Ends rollout #1: titration:v2 is retired" in _section(text, "rollback")


def test_model_page_without_any_rollout_says_so(client: TestClient, rig: Rig) -> None:
    sign_in(client, "clina")
    text = client.get(MODEL).text
    assert "This model has had no rollout." in text
    assert 'id="rollback"' not in text


def test_model_page_of_unknown_model_is_404_and_audited(
    client: TestClient, rig: Rig, count_audit: Callable[..., int]
) -> None:
    sign_in(client, "mleng")
    assert client.get("/portal/models/nosuch").status_code == 404
    assert count_audit(action="model.read", resource_id="nosuch", outcome="failure") == 1


def test_models_page_after_rollback_older_than_14_days_shows_no_alert(
    client: TestClient, rolled_back: Rollout, rig: Rig
) -> None:
    found = rig.rollout()
    found.ended_at = found.ended_at - timedelta(days=15) if found.ended_at else None
    rig.s.commit()
    sign_in(client, "mleng")
    text = client.get(MODELS).text
    assert f'data-rollout="{rolled_back.id}"' not in text
    assert BANNER not in client.get("/portal/").text


# ------------------------------------------------------------------ the home page banner


@pytest.mark.parametrize("user", ["mleng", "auditor", "clina"])
def test_home_after_automatic_rollback_shows_banner_to_model_readers(
    client: TestClient, rolled_back: Rollout, user: str
) -> None:
    sign_in(client, user)
    text = client.get("/portal/").text
    assert BANNER in text
    assert "1 automatic rollback in the last 14 days" in text
    assert "Latest: titration:v2 at canary 10%" in text
    assert 'href="/portal/models/titration">See the model alert</a>' in text


@pytest.mark.parametrize("user", ["pa1", "admin"])
def test_home_after_automatic_rollback_shows_no_banner_to_others(
    client: TestClient, rolled_back: Rollout, user: str
) -> None:
    sign_in(client, user)
    text = client.get("/portal/").text
    assert BANNER not in text
    assert "Automatic rollback" not in text


def test_home_without_alert_shows_no_banner(client: TestClient, rig: Rig) -> None:
    sign_in(client, "mleng")
    assert BANNER not in client.get("/portal/").text


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize("user", ["pa1", "admin"])
def test_model_pages_when_role_may_not_read_models_are_refused_and_audited(
    client: TestClient, rolled_back: Rollout, user: str, count_audit: Callable[..., int]
) -> None:
    sign_in(client, user)
    for path, action in ((MODELS, "model.list"), (MODEL, "model.read")):
        page = client.get(path)
        assert page.status_code == 403
        assert 'data-code="forbidden"' in page.text  # the portal's error page
        assert rolled_back.end_reason not in page.text
        assert count_audit(action=action, outcome="denied") == 1
    assert 'href="/portal/models"' not in client.get("/portal/").text


# ------------------------------------------------------------------ manual rollback


def test_rollback_as_ml_engineer_with_password_ends_the_running_rollout(
    client: TestClient, rig: Rig
) -> None:
    rig.to_canary()
    csrf = sign_in(client, "mleng")
    page = client.get(MODEL).text
    assert 'action="/portal/models/titration/rollback"' in page
    r = client.post(
        ROLLBACK,
        data={"csrf_token": csrf, "reason": "INC-7: odd proposals", "password": PASSWORD},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/portal/models/titration?notice=rolled_back"
    found = rig.rollout()
    assert found.status == RolloutStatus.ROLLED_BACK
    assert found.end_reason == "manual rollback: INC-7: odd proposals"
    rig.s.commit()
    after = client.get(r.headers["location"]).text
    assert "Rolled back. What serves now is shown below." in after
    assert "No automatic rollback and no serving failure." in after  # manual: no alert
    (entry,) = _entries(rig, "model.rollback")
    assert (entry.actor, entry.outcome) == (f"user:{rig.world.users['mleng'].id}", "success")
    assert _details(entry) == {
        "retired_version": 2,
        "serving_version": 1,
        "rollout_id": found.id,
        "reauthenticated": True,
    }
    (ended,) = _entries(rig, "model.rollout.rollback")
    assert _details(ended)["automatic"] is False


def test_rollback_with_wrong_password_rolls_nothing_back_and_is_audited_as_denial(
    client: TestClient, rig: Rig
) -> None:
    rig.to_canary()
    csrf = sign_in(client, "mleng")
    r = client.post(
        ROLLBACK,
        data={"csrf_token": csrf, "reason": "INC-8", "password": "wrong-password"},
        follow_redirects=False,
    )
    assert r.status_code == 403
    assert "The password is wrong: nothing was rolled back." in r.text
    assert ">INC-8</textarea>" in r.text  # what was entered, never the password
    assert "wrong-password" not in r.text
    assert rollout.active(rig.s, name="titration") is not None
    rig.s.commit()
    (entry,) = _entries(rig, "model.rollback")
    assert entry.outcome == "denied"
    assert _details(entry)["code"] == "password_invalid"
    assert _entries(rig, "model.rollout.rollback") == []


def test_rollback_without_reason_is_422_and_asks_for_no_password(
    client: TestClient, rig: Rig
) -> None:
    rig.to_canary()
    csrf = sign_in(client, "mleng")
    r = client.post(
        ROLLBACK,
        data={"csrf_token": csrf, "reason": "  ", "password": "wrong-password"},
        follow_redirects=False,
    )
    assert r.status_code == 422
    assert "Say why." in r.text
    assert rollout.active(rig.s, name="titration") is not None
    rig.s.commit()
    (entry,) = _entries(rig, "model.rollback")
    assert (entry.outcome, _details(entry)["code"]) == ("failure", "reason_required")


def test_rollback_with_nothing_to_restore_is_409_with_the_reason(
    client: TestClient, rig: Rig
) -> None:
    csrf = sign_in(client, "mleng")
    page = client.get(MODEL).text
    assert "a rollback would be refused" in page
    assert 'action="/portal/models/titration/rollback"' not in page  # no form to refuse
    r = client.post(
        ROLLBACK,
        data={"csrf_token": csrf, "reason": "why not", "password": PASSWORD},
        follow_redirects=False,
    )
    assert r.status_code == 409
    assert "no version of titration served before v1" in r.text
    (entry,) = _entries(rig, "model.rollback")
    assert (entry.outcome, _details(entry)["code"]) == ("failure", "no_previous_version")


def test_rollback_after_completed_rollout_restores_the_previous_version(
    client: TestClient, world: World, tmp_path: Path, frozen_clock: FrozenClock
) -> None:
    rig = Rig(world, tmp_path, challenger_push=2.0)
    rig.start()
    minute = 1.0
    for _ in range(5):  # shadow, 10, 25, 50, 100%: completed
        rig.evaluate(minute)
        rig.tick(minute + 10)
        minute += 11
    assert rig.rollout().status == RolloutStatus.COMPLETED
    rig.s.commit()
    frozen_clock.now = rig.at(90)
    csrf = sign_in(client, "mleng")
    assert "Retires titration:v2 and restores titration:v1" in client.get(MODEL).text
    r = client.post(
        ROLLBACK,
        data={"csrf_token": csrf, "reason": "INC-9", "password": PASSWORD},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    assert (rig.status(1), rig.status(2)) == ("production", "retired")
    rig.s.commit()
    page = client.get(r.headers["location"]).text
    assert "<strong>titration:v1</strong> (champion)" in page
    assert "manual rollback to v1: INC-9" in _section(page, "history")
    found = sorted((_details(e) for e in _entries(rig, "model.rollback")), key=len)
    route, service = found[-1], found[0]  # the page's entry, and the service's
    assert route["reauthenticated"] is True
    assert service == {
        "retired_version": 2,
        "restored_version": 1,
        "restored_artifact_ok": True,
    }


@pytest.mark.parametrize("user", ["clina", "auditor"])
def test_rollback_as_reader_only_is_refused(client: TestClient, rig: Rig, user: str) -> None:
    rig.to_canary()
    csrf = sign_in(client, user)
    r = client.post(
        ROLLBACK,
        data={"csrf_token": csrf, "reason": "no", "password": PASSWORD},
        follow_redirects=False,
    )
    assert r.status_code == 403
    assert rollout.active(rig.s, name="titration") is not None
    rig.s.commit()


def test_rollback_without_csrf_token_is_refused(client: TestClient, rig: Rig) -> None:
    rig.to_canary()
    sign_in(client, "mleng")
    r = client.post(ROLLBACK, data={"reason": "x", "password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 403
    assert rollout.active(rig.s, name="titration") is not None
    rig.s.commit()


def test_serving_failure_alert_counts_model_unavailable_evaluations(
    client: TestClient, rolled_back: Rollout, rig: Rig
) -> None:
    unavailable = [e for e in rig.evaluations(12) if e.outcome == Outcome.MODEL_UNAVAILABLE]
    rig.s.commit()
    assert unavailable
    sign_in(client, "mleng")
    text = client.get(MODEL).text
    n = len(unavailable)
    assert f"{n} evaluation{'' if n == 1 else 's'} sent to clinicians" in text
