"""Properties of the pure rules under generated facts (hypothesis): what the docstrings of
loops/visits/cadence.py and loops/care/progress.py promise, for any input, not only the
hand-picked rows of the table-driven tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loops.care.models import GoalKind
from loops.care.progress import (
    MIN_DAYS_7D,
    MIN_DOSES_28D,
    BpPoint,
    DosePoint,
    GoalTarget,
    LogPoint,
    ProgressData,
    StepPoint,
    progress,
)
from loops.visits import cadence
from loops.visits.cadence import CadenceFacts, Reason, next_review
from loops.visits.models import VisitKind

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001 - hypothesis takes naive bounds
    max_value=datetime(2090, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)
AGO = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=400))


@st.composite
def facts(draw: st.DrawFn) -> CadenceFacts:
    """Any cadence facts around a `now`: alerts and changes in the past, means with or without
    enough readings, any adherence and run of controlled days."""
    now = draw(NOW)

    def past() -> datetime | None:
        return draw(st.none() | AGO.map(lambda d: now - d))

    sbp = draw(st.none() | st.floats(60, 250))
    return CadenceFacts(
        now=now,
        since=past(),
        crisis_alert_at=past(),
        low_bp_alert_at=past(),
        sbp_7d=sbp,
        dbp_7d=None if sbp is None else draw(st.floats(30, 150)),
        readings_7d=draw(st.integers(0, 40)),
        days_7d=draw(st.integers(0, 7)),
        target=draw(st.sampled_from([(135.0, 85.0), (130.0, 80.0), (120.0, 70.0)])),
        target_from_goal=draw(st.booleans()),
        last_change_at=past(),
        adherence_28d=draw(st.none() | st.floats(0, 1)),
        controlled_days=draw(st.integers(0, 400)),
    )


def _anchor(f: CadenceFacts) -> datetime:
    """The latest fact a date counts from: the last review (or now) or a recent change."""
    since = f.since or f.now
    change = f.last_change_at
    if change is not None and f.now - change < cadence.RECENT_CHANGE:
        return max(since, change)
    return since


@SETTINGS
@given(facts())
def test_cadence_when_facts_vary_is_never_later_than_six_months_after_its_anchor(
    f: CadenceFacts,
) -> None:
    assert next_review(f).due_by <= _anchor(f) + cadence.SIX_MONTHS


@SETTINGS
@given(facts())
def test_cadence_when_facts_vary_is_never_before_its_earliest_anchor(f: CadenceFacts) -> None:
    due = next_review(f).due_by
    floors = [(f.since or f.now) + cadence.CALL]  # the shortest span from the last review
    floors += [a + cadence.URGENT for a in (f.crisis_alert_at, f.low_bp_alert_at) if a]
    assert due >= min(floors)


@SETTINGS
@given(facts())
def test_cadence_when_an_urgent_alert_is_open_is_due_within_48h_of_it(f: CadenceFacts) -> None:
    cad = next_review(f)
    for raised, reason in (
        (f.crisis_alert_at, Reason.CRISIS_ALERT),
        (f.low_bp_alert_at, Reason.LOW_BP_ALERT),
    ):
        if raised is not None:
            assert cad.due_by <= raised + timedelta(hours=48)
            assert reason in cad.reasons
            assert cad.kind is VisitKind.VISIT  # an urgent review is never just a call


def test_cadence_when_low_bp_alert_and_an_older_call_is_due_first_is_a_visit() -> None:
    now = datetime(2026, 12, 6, tzinfo=UTC)
    f = CadenceFacts(
        now=now, since=now - timedelta(days=13), low_bp_alert_at=now, adherence_28d=0.4
    )
    cad = next_review(f)
    # The call (from the review 13 days ago) is due a day before the alert's 48 hours: it is
    # the date, but the low blood pressure needs a visit, not a phone call.
    assert cad.due_by == now + timedelta(days=1)
    assert cad.kind is VisitKind.VISIT
    assert Reason.LOW_BP_ALERT in cad.reasons
    assert "see you" in cad.why


@SETTINGS
@given(facts())
def test_cadence_when_it_is_a_call_is_for_adherence_only(f: CadenceFacts) -> None:
    cad = next_review(f)
    if cad.kind is VisitKind.CALL:
        assert cad.reasons[0] is Reason.POOR_ADHERENCE
        assert f.adherence_28d is not None
        assert f.adherence_28d < cadence.MIN_ADHERENCE


@SETTINGS
@given(facts())
def test_cadence_reasons_are_unique_and_explained(f: CadenceFacts) -> None:
    cad = next_review(f)
    assert cad.reasons
    assert len(set(cad.reasons)) == len(cad.reasons)
    if not cadence.sufficient(f):
        assert Reason.INSUFFICIENT_DATA in cad.reasons
    assert ("as soon as possible" in cad.why) == (cad.due_by <= f.now)
    assert cad.why.endswith(".")


@SETTINGS
@given(facts(), st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3)))
def test_cadence_when_recomputed_later_with_the_same_reasons_keeps_its_date(
    f: CadenceFacts, later: timedelta
) -> None:
    if f.since is None:
        return  # no review or enrolment on record: the rule counts from now (documented)
    first = next_review(f)
    again = next_review(CadenceFacts(**{**vars(f), "now": f.now + later}))
    if again.reasons == first.reasons and again.kind == first.kind:
        assert again.due_by == first.due_by  # dates count from facts, not from now


@SETTINGS
@given(
    st.lists(st.tuples(st.integers(0, 120), st.floats(60, 250), st.floats(30, 150)), max_size=60),
    NOW,
)
def test_controlled_days_is_bounded_by_the_days_with_readings(
    rows: list[tuple[int, float, float]], now: datetime
) -> None:
    readings = [(now - timedelta(days=d), s, dd) for d, s, dd in rows]
    days = cadence.controlled_days(readings, target=(135.0, 85.0), today=now.date())
    assert days >= 0
    if not readings:
        assert days == 0
    else:
        earliest = min(r[0].date() for r in readings)
        assert days <= (now.date() - earliest).days + 1


# ------------------------------------------------------------------------- progress

OFFSET = st.timedeltas(min_value=timedelta(days=-40), max_value=timedelta(days=3))


@st.composite
def progress_case(draw: st.DrawFn) -> tuple[GoalTarget, ProgressData, datetime]:
    """A goal of any kind and a patient's data around `now` (some of it in the future)."""
    now = draw(NOW)
    kind = draw(st.sampled_from(list(GoalKind)))
    if kind is GoalKind.BLOOD_PRESSURE:
        target = GoalTarget(
            kind, systolic=draw(st.floats(80, 180)), diastolic=draw(st.floats(50, 110))
        )
    else:
        target = GoalTarget(kind, value=draw(st.floats(0.5, 50_000)))
    bp = draw(
        st.lists(
            st.builds(
                BpPoint,
                OFFSET.map(lambda d: now + d),
                st.floats(60, 250),
                st.floats(30, 150),
                st.sampled_from(["validated_cuff", "cuffless_wearable", "other"]),
                st.sampled_from(["accepted", "quarantined"]),
                st.sampled_from([None, "minimum"]),
            ),
            max_size=40,
        )
    )
    steps = draw(
        st.lists(
            st.builds(StepPoint, OFFSET.map(lambda d: now + d), st.floats(0, 40_000)), max_size=40
        )
    )
    doses = draw(
        st.lists(st.builds(DosePoint, OFFSET.map(lambda d: now + d), st.booleans()), max_size=60)
    )
    logs = draw(
        st.lists(
            st.builds(LogPoint, OFFSET.map(lambda d: (now + d).date()), st.floats(0, 20_000)),
            max_size=40,
        )
    )
    data = ProgressData(
        bp=bp, steps=steps, doses=doses, logs={GoalKind.SODIUM: logs, GoalKind.SLEEP: logs}
    )
    return target, data, now


@SETTINGS
@given(progress_case())
def test_progress_met_is_none_with_too_little_data(
    case: tuple[GoalTarget, ProgressData, datetime],
) -> None:
    target, data, now = case
    p = progress(target, data, now)
    if target.kind is GoalKind.ADHERENCE:
        if p.count < MIN_DOSES_28D:
            assert p.met is None
    elif p.days_with_data < MIN_DAYS_7D:
        assert p.met is None
    if p.met is not None:
        assert p.value is not None


@SETTINGS
@given(progress_case())
def test_progress_counts_stay_within_their_windows(
    case: tuple[GoalTarget, ProgressData, datetime],
) -> None:
    target, data, now = case
    p = progress(target, data, now)
    assert 0 <= p.days_with_data <= p.window_days
    assert p.days_28 <= 28
    if target.kind is not GoalKind.ADHERENCE:
        assert p.days_with_data <= p.days_28
        assert p.days_meeting_28 is not None
        assert 0 <= p.days_meeting_28 <= p.days_28
    share = p.share_meeting_28
    assert share is None or 0 <= share <= 1
    assert p.sentence
    if target.kind is GoalKind.ADHERENCE and p.value is not None:
        assert 0 <= p.value <= 1


@SETTINGS
@given(progress_case())
def test_progress_ignores_future_cuffless_quarantined_and_interval_readings(
    case: tuple[GoalTarget, ProgressData, datetime],
) -> None:
    target, data, now = case
    kept_bp = [
        p
        for p in data.bp
        if p.time <= now
        and p.device_class == "validated_cuff"
        and p.status == "accepted"
        and p.statistic is None
    ]
    kept = ProgressData(
        bp=kept_bp,
        steps=[p for p in data.steps if p.time <= now],
        doses=[p for p in data.doses if p.time <= now],
        logs={k: [p for p in v if p.day <= now.date()] for k, v in (data.logs or {}).items()},
    )
    assert progress(target, data, now) == progress(target, kept, now)


@SETTINGS
@given(progress_case())
def test_progress_bp_met_means_both_means_below_target(
    case: tuple[GoalTarget, ProgressData, datetime],
) -> None:
    target, data, now = case
    p = progress(target, data, now)
    if target.kind is GoalKind.BLOOD_PRESSURE and p.met is not None:
        assert p.value is not None
        assert p.value_diastolic is not None
        assert p.met == (
            p.value < (target.systolic or 0) and p.value_diastolic < (target.diastolic or 0)
        )
