"""Messaging regressions found by the sweep: paging parameters past what the database can
compare (a message id beyond 64 bits, a cursor time with no UTC equivalent)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from tests.hostile.conftest import Caller, Scene, assert_problem


@pytest.mark.parametrize("before", [2**63, 10**30])
@pytest.mark.parametrize(
    ("who", "path"),
    [("pa1", "/api/v1/me/messages/{t}"), ("clina", "/api/v1/messages/threads/{t}")],
)
def test_thread_when_before_exceeds_64_bits_is_422(
    scene: Scene, as_: Callable[[str], Caller], who: str, path: str, before: int
) -> None:
    r = as_(who)("GET", path.format(t=scene.ids["pa1.thread"]), params={"before": before})
    assert_problem(r, 422)


@pytest.mark.parametrize("who", ["pa1", "clina"])
def test_thread_page_when_before_exceeds_64_bits_is_422_not_500(
    scene: Scene, browser: Callable[[str], tuple[TestClient, str]], who: str
) -> None:
    c, _ = browser(who)
    r = c.get(f"/portal/messages/{scene.ids['pa1.thread']}", params={"before": 10**30})
    assert r.status_code == 422


@pytest.mark.parametrize(
    "cursor",
    [
        "OTk5OS0xMi0zMVQyMzo1OTo1OS0xNDowMHxhYmM",  # 9999-12-31T23:59:59-14:00|abc
        "MDAwMS0wMS0wMVQwMDowMDowMCsxNDowMHxhYmM",  # 0001-01-01T00:00:00+14:00|abc
    ],
)
def test_list_when_cursor_time_has_no_utc_equivalent_is_422(
    scene: Scene, as_: Callable[[str], Caller], cursor: str
) -> None:
    r = as_("pa1")("GET", "/api/v1/me/messages", params={"cursor": cursor})
    assert_problem(r, 422)
    assert r.json()["code"] == "invalid_cursor"


def test_patient_messages_page_when_cursor_has_no_utc_time_starts_from_newest(
    scene: Scene, browser: Callable[[str], tuple[TestClient, str]]
) -> None:
    c, _ = browser("clina")
    r = c.get(
        f"/portal/patients/{scene.pid('pa1')}/messages",
        params={"cursor": "OTk5OS0xMi0zMVQyMzo1OTo1OS0xNDowMHxhYmM"},
    )
    assert r.status_code == 200
    assert "subject-of-pa1" in r.text
