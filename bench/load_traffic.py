"""The load test's simulated users: devices, clinicians and patients (asyncio + httpx2).

Every request goes round-robin over the API replicas. A connection error or a 5xx answer is
retried (bounded) against the next replica with the same body and, for device readings, the
same Idempotency-Key, as a device in the field would do. Every answer is timed per endpoint
group and counted by status.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import orjson

FHIR = "application/fhir+json"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
RETRYABLE = {500, 502, 503, 504}
# How long one request keeps retrying through a fault (replica killed, database restarting).
RETRY_BUDGET_S = 90.0


@dataclass
class Stats:
    """Everything the drivers saw, for the report and the reconciliation."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    transport_errors: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    unanswered: int = 0  # requests that never got an answer within the retry budget
    # Device readings, counted from the answers, one logical request (key) once.
    sent_entries: int = 0
    answered: Counter[str] = field(default_factory=Counter)  # accepted/quarantined/...
    intended: Counter[str] = field(default_factory=Counter)  # what the client meant to send
    keys: dict[str, tuple[str, int, bytes]] = field(default_factory=dict)  # key -> (dev, st, body)
    replay_checks: int = 0
    replay_mismatches: int = 0
    fault_retried_keys: set[str] = field(default_factory=set)
    # Clinicians.
    decisions_made: set[str] = field(default_factory=set)  # proposal ids answered 201
    decisions_lost_answer: set[str] = field(default_factory=set)  # 201 lost, then 409 by us
    claims: int = 0
    # Patients.
    polls: int = 0
    driver_failures: list[str] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)
    server_errors_at: list[float] = field(default_factory=list)  # seconds into the drive

    def record(self, group: str, status: int, seconds: float) -> None:
        """One answered request."""
        self.latencies[group].append(seconds)
        self.statuses[group][status] += 1
        if status >= 500:
            self.server_errors_at.append(time.monotonic() - self.t0)


class Cluster:
    """Round-robin over the replicas, retrying through faults."""

    def __init__(self, bases: list[str], stats: Stats, concurrency: int) -> None:
        self.bases = bases
        self.stats = stats
        self._next = itertools.count()
        self._gate = asyncio.Semaphore(concurrency)
        self.client = httpx2.AsyncClient(
            timeout=httpx2.Timeout(30.0, connect=5.0),
            limits=httpx2.Limits(
                max_connections=concurrency, max_keepalive_connections=concurrency
            ),
        )

    async def request(
        self,
        group: str,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        data: dict[str, str] | None = None,
        on_retry: str | None = None,
        retried: list[bool] | None = None,
    ) -> httpx2.Response | None:
        """Send, retrying connection errors and 5xx on the next replica; None if it never
        got an answer within the budget."""
        deadline = time.monotonic() + RETRY_BUDGET_S
        attempt = 0
        while True:
            base = self.bases[next(self._next) % len(self.bases)]
            t0 = time.perf_counter()
            try:
                async with self._gate:
                    t0 = time.perf_counter()
                    r = await self.client.request(
                        method, base + path, headers=headers, content=content, data=data
                    )
            except httpx2.TransportError as exc:
                self.stats.transport_errors[type(exc).__name__] += 1
                r = None
            else:
                self.stats.record(group, r.status_code, time.perf_counter() - t0)
                if r.status_code not in RETRYABLE:
                    return r
            attempt += 1
            if time.monotonic() > deadline:
                self.stats.unanswered += 1
                return None
            self.stats.retries += 1
            if on_retry is not None:
                self.stats.fault_retried_keys.add(on_retry)
            if retried is not None:
                retried[0] = True
            await asyncio.sleep(min(0.1 * 2**attempt, 2.0))

    async def close(self) -> None:
        """Close the connections."""
        await self.client.aclose()


async def nap(seconds: float, stop_at: float) -> None:
    """Sleep, but not past the end of the drive."""
    await asyncio.sleep(max(0.0, min(seconds, stop_at - time.monotonic())))


def _bp(when: datetime, systolic: float, diastolic: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        "effectiveDateTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "component": [
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                "valueQuantity": {"value": systolic, "system": UCUM, "code": "mm[Hg]"},
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                "valueQuantity": {"value": diastolic, "system": UCUM, "code": "mm[Hg]"},
            },
        ],
    }


def _invalid(when: datetime) -> dict[str, Any]:
    """A heart rate in a unit the server does not take: refused, kept in ingest_rejections."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "8867-4"}]},
        "effectiveDateTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "valueQuantity": {"value": 1.2, "system": UCUM, "code": "/s"},
    }


def _omh(when: datetime, systolic: float, diastolic: float) -> dict[str, Any]:
    return {
        "header": {
            "id": str(uuid.uuid4()),
            "creation_date_time": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "schema_id": {"namespace": "omh", "name": "blood-pressure", "version": "4.0"},
        },
        "body": {
            "systolic_blood_pressure": {"value": systolic, "unit": "mmHg"},
            "diastolic_blood_pressure": {"value": diastolic, "unit": "mmHg"},
            "effective_time_frame": {"date_time": when.strftime("%Y-%m-%dT%H:%M:%SZ")},
        },
    }


@dataclass
class Device:
    """One simulated cuff: its key, its clock of readings and what it sent before."""

    index: int
    key: str
    rng: random.Random
    seq: int = 0
    sent_bodies: list[tuple[str, bytes, int]] = field(default_factory=list)  # (type, body, n)

    def next_time(self, start: datetime) -> datetime:
        self.seq += 1
        return start + timedelta(seconds=self.seq * 61 + self.index % 60)

    def batch(self, start: datetime, stats: Stats) -> tuple[str, bytes, int]:
        """A new request body: a FHIR batch Bundle (most) or an Open mHealth list."""
        n = self.rng.randint(1, 12)
        kinds = []
        for _ in range(n):
            x = self.rng.random()
            kinds.append("invalid" if x < 0.03 else "quarantined" if x < 0.08 else "accepted")
        if self.rng.random() < 0.2 and "invalid" not in kinds:
            # Open mHealth: swapped values are quarantined there too.
            points = []
            for k in kinds:
                when = self.next_time(start)
                s, d = self._values(k)
                points.append(_omh(when, s, d))
            stats.intended.update(kinds)
            return "application/json", orjson.dumps(points), n
        entries = []
        for k in kinds:
            when = self.next_time(start)
            resource = _invalid(when) if k == "invalid" else _bp(when, *self._values(k))
            entries.append(
                {"request": {"method": "POST", "url": "Observation"}, "resource": resource}
            )
        stats.intended.update(kinds)
        bundle = {"resourceType": "Bundle", "type": "batch", "entry": entries}
        return FHIR, orjson.dumps(bundle), n

    def _values(self, kind: str) -> tuple[float, float]:
        s = float(self.rng.randint(105, 175))
        d = float(self.rng.randint(60, 99))
        if kind == "quarantined":  # systolic and diastolic swapped: implausible
            return d, s
        return s, d


def count_answer(content_type: str, body: bytes, stats: Stats) -> None:
    """Count each entry of an ingest answer by what became of it."""
    doc = orjson.loads(body)
    if content_type == FHIR:
        for e in doc.get("entry", []):
            st = e["response"]["status"]
            if st.startswith("201"):
                quarantined = any(
                    any(
                        c.get("code") == "quarantined"
                        for c in i.get("details", {}).get("coding", [])
                    )
                    for i in e["response"].get("outcome", {}).get("issue", [])
                )
                stats.answered["quarantined" if quarantined else "accepted"] += 1
            elif st.startswith("200"):
                stats.answered["duplicate"] += 1
            else:
                stats.answered["rejected"] += 1
    else:
        for e in doc.get("entries", []):
            status = e["status"]
            stats.answered[{"duplicate": "duplicate"}.get(status, status)] += 1


async def device_loop(
    cluster: Cluster, dev: Device, start: datetime, stop_at: float, period: float
) -> None:
    """Send a batch every `period` seconds (jittered); some resent, some retried."""
    stats = cluster.stats
    await nap(dev.rng.random() * period, stop_at)
    while time.monotonic() < stop_at:
        roll = dev.rng.random()
        if roll < 0.05 and dev.sent_bodies:
            # The same readings again under a new key (a device that lost its answer and
            # does not use keys consistently): every entry is a duplicate or refused again.
            ctype, body, n = dev.rng.choice(dev.sent_bodies)
        else:
            ctype, body, n = dev.batch(start, stats)
            dev.sent_bodies = ([*dev.sent_bodies, (ctype, body, n)])[-5:]
        key = f"load-{dev.index}-{uuid.uuid4().hex}"
        headers = {
            "Authorization": f"Bearer {dev.key}",
            "Content-Type": ctype,
            "Idempotency-Key": key,
        }
        r = await cluster.request(
            "ingest",
            "POST",
            "/api/v1/device/observations",
            headers=headers,
            content=body,
            on_retry=key,
        )
        if r is not None and r.status_code in (200, 201):
            stats.sent_entries += n
            stats.keys[key] = (str(dev.index), r.status_code, r.content)
            count_answer(ctype, r.content, stats)
            if dev.rng.random() < 0.1:
                # A deliberate retry with the same key: the original answer, byte for byte.
                again = await cluster.request(
                    "ingest_replay",
                    "POST",
                    "/api/v1/device/observations",
                    headers=headers,
                    content=body,
                )
                if again is not None:
                    stats.replay_checks += 1
                    if (
                        again.status_code != r.status_code
                        or again.content != r.content
                        or again.headers.get("idempotent-replayed") != "true"
                    ):
                        stats.replay_mismatches += 1
        await nap(period * (0.5 + dev.rng.random()), stop_at)


async def login(cluster: Cluster, username: str, password: str) -> str:
    """An access token (the login is retried through faults like any request)."""
    r = await cluster.request(
        "login",
        "POST",
        "/api/v1/auth/token",
        data={"grant_type": "password", "username": username, "password": password},
    )
    if r is None or r.status_code != 200:
        raise RuntimeError(f"login {username}: {None if r is None else r.status_code}")
    return str(r.json()["access_token"])


async def clinician_loop(
    cluster: Cluster,
    username: str,
    full_name: str,
    password: str,
    stop_at: float,
    rng: random.Random,
) -> None:
    """Work the review queue: list, claim, read, decide with a signature."""
    stats = cluster.stats
    auth = {"Authorization": f"Bearer {await login(cluster, username, password)}"}
    while time.monotonic() < stop_at:
        r = await cluster.request(
            "review_queue", "GET", "/api/v1/review/queue?limit=50", headers=auth
        )
        items = [] if r is None or r.status_code != 200 else r.json()["items"]
        free = [i for i in items if i["claim"] is None]
        if not free:
            await nap(2.0, stop_at)
            continue
        item = rng.choice(free[:10])
        pid = item["proposal_id"]
        c = await cluster.request(
            "review_claim", "POST", f"/api/v1/review/proposals/{pid}/claim", headers=auth
        )
        if c is None or c.status_code != 200:
            continue
        stats.claims += 1
        await cluster.request(
            "review_detail", "GET", f"/api/v1/review/proposals/{pid}", headers=auth
        )
        await nap(rng.uniform(0.5, 2.0), stop_at)  # reading the page
        if rng.random() < 0.6:
            decision: dict[str, Any] = {"kind": "approve"}
        else:
            decision = {"kind": "reject", "reason_code": "clinical_judgement"}
        decision.update(password=password, meaning_confirmed=True)
        body = orjson.dumps(decision)
        hdrs = {**auth, "Content-Type": "application/json"}
        path = f"/api/v1/review/proposals/{pid}/decision"
        # No idempotency key on decisions: a retry after a lost answer meets 409
        # already_decided naming the decider, which is us when the lost attempt committed.
        retried = [False]
        d = await cluster.request(
            "review_decision", "POST", path, headers=hdrs, content=body, retried=retried
        )
        if d is not None and d.status_code == 201:
            stats.decisions_made.add(pid)
        elif (
            d is not None
            and retried[0]
            and d.status_code == 409
            and d.json().get("code") == "already_decided"
            and d.json().get("holder") == full_name
        ):
            stats.decisions_lost_answer.add(pid)
        await nap(rng.uniform(0.2, 1.0), stop_at)


async def patient_loop(
    cluster: Cluster, username: str, password: str, stop_at: float, rng: random.Random
) -> None:
    """Poll recommendations and alerts, as the app does in the foreground."""
    auth = {"Authorization": f"Bearer {await login(cluster, username, password)}"}
    while time.monotonic() < stop_at:
        await cluster.request("patient_poll", "GET", "/api/v1/me/recommendations", headers=auth)
        await cluster.request("patient_poll", "GET", "/api/v1/me/alerts", headers=auth)
        cluster.stats.polls += 1
        await nap(rng.uniform(1.0, 3.0), stop_at)


def now_utc() -> datetime:
    """The current UTC time."""
    return datetime.now(UTC)
