"""Reading back: FHIR Observation search and the portal's daily summaries."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle

from device_ingest.models import DeviceClass
from tests.conftest import World
from tests.ingest.conftest import DeviceClient, bp, bundle, hr


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_search_when_paged_returns_valid_searchset_bundles(
    device: DeviceClient, client: TestClient, world: World
) -> None:
    base = datetime(2026, 3, 1, 8, tzinfo=UTC)
    device.post(
        bundle(
            "batch",
            [bp(120 + i, 80, _iso(base + timedelta(hours=i))) for i in range(7)]
            + [hr(64, _iso(base))],
        )
    )
    url = f"/fhir/R4/Observation?patient={device.patient_id}&code=85354-9&_count=3"
    seen = []
    while url:
        r = client.get(url, headers=world.auth("clina"))
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/fhir+json"
        parsed = Bundle.model_validate(r.json())
        assert parsed.type == "searchset"
        assert parsed.total == 7
        seen += [e["resource"]["component"][0]["valueQuantity"]["value"] for e in r.json()["entry"]]
        nxt = [link["url"] for link in r.json()["link"] if link["relation"] == "next"]
        url = nxt[0].replace("http://testserver", "") if nxt else ""
    assert seen == [120.0 + i for i in range(7)]


def test_search_when_dated_filters_by_range(
    device: DeviceClient, client: TestClient, world: World
) -> None:
    days = [datetime(2026, 3, d, 9, tzinfo=UTC) for d in (1, 2, 3, 4)]
    device.post(bundle("batch", [bp(120 + i, 80, _iso(d)) for i, d in enumerate(days)]))
    r = client.get(
        f"/fhir/R4/Observation?patient={device.patient_id}&date=ge2026-03-02&date=le2026-03-03",
        headers=world.auth("pa1"),
    )
    assert r.json()["total"] == 2
    bad = client.get(
        f"/fhir/R4/Observation?patient={device.patient_id}&date=ge2026-13-01",
        headers=world.auth("pa1"),
    )
    assert bad.status_code == 400
    assert bad.json()["code"] == "invalid_search"


def test_search_when_patient_omitted_defaults_to_own_record(
    device: DeviceClient, client: TestClient, world: World
) -> None:
    device.post(bp())
    assert client.get("/fhir/R4/Observation", headers=world.auth("pa1")).json()["total"] == 1
    r = client.get("/fhir/R4/Observation", headers=world.auth("clina"))
    assert r.status_code == 404  # no patient named: nothing in scope to search


def test_daily_summary_when_readings_split_am_pm_and_device_class(
    device: DeviceClient, make_device: Callable[..., DeviceClient], client: TestClient, world: World
) -> None:
    day = datetime(2026, 3, 10, tzinfo=UTC)
    watch = make_device("pa1", DeviceClass.CUFFLESS_WEARABLE)
    device.post(
        bundle(
            "batch",
            [
                bp(130, 80, _iso(day + timedelta(hours=7))),
                bp(134, 84, _iso(day + timedelta(hours=8))),
                bp(120, 70, _iso(day + timedelta(hours=19))),
                bp(400, 80, _iso(day + timedelta(hours=20))),
                hr(60, _iso(day + timedelta(hours=7))),
                hr(70, _iso(day + timedelta(hours=8))),
            ],
        )
    )
    watch.post(bp(140, 90, _iso(day + timedelta(hours=12))))
    r = client.get(
        f"/api/v1/patients/{device.patient_id}/readings?from=2026-03-10&to=2026-03-10",
        headers=world.auth("clina"),
    )
    assert r.status_code == 200
    (summary,) = r.json()
    assert summary["cuff_am"] == {"systolic": 132.0, "diastolic": 82.0, "n": 2}
    assert summary["cuff_pm"] == {"systolic": 120.0, "diastolic": 70.0, "n": 1}
    assert summary["cuffless"] == {"systolic": 140.0, "diastolic": 90.0, "n": 1}
    assert summary["heart_rate_mean"] == 65.0
    assert (summary["readings"], summary["quarantined"]) == (7, 1)


def test_daily_summary_when_timezone_given_uses_local_days(
    device: DeviceClient, client: TestClient, world: World
) -> None:
    device.post(bp(130, 80, "2026-03-10T23:30:00Z"))
    r = client.get(
        f"/api/v1/patients/{device.patient_id}/readings?from=2026-03-10"
        "&to=2026-03-11&tz=Europe/Berlin",
        headers=world.auth("pa1"),
    )
    (summary,) = r.json()
    assert summary["date"] == "2026-03-11"
    assert summary["cuff_am"]["n"] == 1
    bad = client.get(
        f"/api/v1/patients/{device.patient_id}/readings?tz=Mars/Olympus", headers=world.auth("pa1")
    )
    assert bad.status_code == 422
