"""The visit cadence rule (pure): from a patient's stability, when the next review is due,
whether it is a visit or a call, and why in plain words. See docs/visits.md for the table.

Every rule that applies gives a candidate date; the earliest wins (on the same date a visit
wins over a call, since a visit covers the call's subject too; with an open urgent alert it is
always a visit) and every applying reason is listed, most urgent first. Dates count from facts,
not from the moment of computing, so a daily recompute keeps them where they are: an urgent
review from the alert's raising, a review after a dose change from the change, the others from
the last completed review (or enrolment). A date already past is overdue.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

from loops.protocol import MIN_DAYS_7D, MIN_READINGS_7D, TARGET_DEFAULT
from loops.visits.models import VisitKind

URGENT = timedelta(hours=48)  # an open crisis or low-BP alert: seen within 48 hours
SOON = timedelta(days=14)  # uncontrolled and a recent change: the short end of 2-4 weeks
WEEKS_4 = timedelta(days=28)  # uncontrolled, or a recent change, or not enough data
CALL = timedelta(days=14)  # poor adherence: a call within 2 weeks, not a dose change
THREE_MONTHS = timedelta(days=91)  # controlled, not yet stable for 90 days
SIX_MONTHS = timedelta(days=182)  # controlled and stable for 90 days with no change
RECENT_CHANGE = timedelta(days=30)  # a dose change less than 30 days ago is recent
STABLE_DAYS = 90  # days controlled (and without a change) that make a patient stable
MIN_ADHERENCE = 0.8  # share of doses taken over the last 28 days
ADHERENCE_WINDOW = timedelta(days=28)
CONTROL_WINDOW_DAYS = 7  # the home mean is over the last 7 days


class Reason(StrEnum):
    """Why a review is due when it is (stored on the visit as codes)."""

    CRISIS_ALERT = "crisis_alert"
    LOW_BP_ALERT = "low_bp_alert"
    UNCONTROLLED = "uncontrolled"
    RECENT_CHANGE = "recent_change"
    POOR_ADHERENCE = "poor_adherence"
    INSUFFICIENT_DATA = "insufficient_data"
    CONTROLLED = "controlled"
    CONTROLLED_STABLE = "controlled_stable"


URGENT_REASONS = frozenset({Reason.CRISIS_ALERT, Reason.LOW_BP_ALERT})


@dataclass(frozen=True)
class CadenceFacts:
    """What the rule looks at; the service gathers it from the database."""

    now: datetime
    since: datetime | None = None  # the last completed review, else enrolment (None: now)
    crisis_alert_at: datetime | None = None  # raised time of the oldest open crisis alert
    low_bp_alert_at: datetime | None = None  # raised time of the oldest open low-BP alert
    sbp_7d: float | None = None  # validated-cuff home mean over the last 7 days
    dbp_7d: float | None = None
    readings_7d: int = 0
    days_7d: int = 0  # days of the last 7 with at least one validated-cuff reading
    target: tuple[float, float] = TARGET_DEFAULT  # the agreed goal's, else the protocol's
    target_from_goal: bool = False
    last_change_at: datetime | None = None  # the last dose change (or regimen start)
    adherence_28d: float | None = None  # None: no dose reports in 28 days
    controlled_days: int = 0  # consecutive days up to today with the 7-day mean below target


@dataclass(frozen=True)
class Cadence:
    """The rule's answer: a visit or a call, due by when, the reason codes and the why."""

    kind: VisitKind
    due_by: datetime
    reasons: tuple[Reason, ...]
    why: str


def sufficient(facts: CadenceFacts) -> bool:
    """Enough validated-cuff data to judge control: the protocol's 12 readings on 4 of 7 days."""
    return (
        facts.sbp_7d is not None
        and facts.dbp_7d is not None
        and facts.readings_7d >= MIN_READINGS_7D
        and facts.days_7d >= MIN_DAYS_7D
    )


def below_target(sbp: float, dbp: float, target: tuple[float, float]) -> bool:
    """Controlled: both means strictly below target (at the target is not controlled, as in
    the titration protocol)."""
    return sbp < target[0] and dbp < target[1]


def controlled_days(
    readings: Iterable[tuple[datetime, float, float]], *, target: tuple[float, float], today: date
) -> int:
    """Consecutive UTC days, counting back from `today`, whose trailing 7-day window holds
    validated-cuff readings with means below target; a day without readings in its window, or
    with the mean at or above target, ends the run."""
    per_day: dict[date, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for when, sbp, dbp in readings:
        sums = per_day[when.date()]
        sums[0] += sbp
        sums[1] += dbp
        sums[2] += 1
    if not per_day:
        return 0
    earliest = min(per_day)
    count = 0
    day = today
    while day >= earliest:
        window = [per_day[d] for d in _window(day) if d in per_day]
        n = sum(w[2] for w in window)
        if not n:
            break
        if not below_target(sum(w[0] for w in window) / n, sum(w[1] for w in window) / n, target):
            break
        count += 1
        day -= timedelta(days=1)
    return count


def _window(day: date) -> list[date]:
    return [day - timedelta(days=k) for k in range(CONTROL_WINDOW_DAYS)]


def next_review(facts: CadenceFacts) -> Cadence:
    """The next review for these facts: every applying rule's date, the earliest wins."""
    now = facts.now
    since = facts.since or now
    # (due, a visit before a call on the same date, reason, span)
    candidates: list[tuple[datetime, int, Reason, timedelta]] = []
    if facts.crisis_alert_at is not None:
        candidates.append((facts.crisis_alert_at + URGENT, 0, Reason.CRISIS_ALERT, URGENT))
    if facts.low_bp_alert_at is not None:
        candidates.append((facts.low_bp_alert_at + URGENT, 0, Reason.LOW_BP_ALERT, URGENT))
    change = facts.last_change_at
    recent = change is not None and now - change < RECENT_CHANGE
    enough = sufficient(facts)
    controlled = (
        enough
        and facts.sbp_7d is not None
        and facts.dbp_7d is not None
        and below_target(facts.sbp_7d, facts.dbp_7d, facts.target)
    )
    uncontrolled = enough and not controlled
    # A review after a change counts from the change (or from a later review).
    after_change = max(since, change) if change is not None and recent else since
    if uncontrolled:
        span = SOON if recent else WEEKS_4
        candidates.append((after_change + span, 0, Reason.UNCONTROLLED, span))
    if recent:
        span = SOON if uncontrolled else WEEKS_4
        candidates.append((after_change + span, 0, Reason.RECENT_CHANGE, span))
    if facts.adherence_28d is not None and facts.adherence_28d < MIN_ADHERENCE:
        candidates.append((since + CALL, 1, Reason.POOR_ADHERENCE, CALL))
    if not enough:
        candidates.append((since + WEEKS_4, 0, Reason.INSUFFICIENT_DATA, WEEKS_4))
    if controlled:
        no_change = change is None or now - change >= timedelta(days=STABLE_DAYS)
        if facts.controlled_days >= STABLE_DAYS and no_change:
            candidates.append((since + SIX_MONTHS, 0, Reason.CONTROLLED_STABLE, SIX_MONTHS))
        else:
            candidates.append((since + THREE_MONTHS, 0, Reason.CONTROLLED, THREE_MONTHS))
    candidates.sort(key=lambda c: (c[0], c[1]))
    due, call, _, _ = candidates[0]
    if call and any(c[2] in URGENT_REASONS for c in candidates):
        # An open crisis or low-BP alert needs the treatment reviewed within 48 hours: a call
        # due a little earlier (from an old review) must not stand in for that visit, and the
        # visit covers the call's subject too.
        call = 0
    kind = VisitKind.CALL if call else VisitKind.VISIT
    reasons = tuple(dict.fromkeys(c[2] for c in candidates))
    return Cadence(kind, due, reasons, explain(facts, kind, reasons, due))


def explain(facts: CadenceFacts, kind: VisitKind, reasons: Sequence[Reason], due: datetime) -> str:
    """The reasons in plain words for the patient, then what happens and by when."""
    sentences = [_sentence(facts, r) for r in reasons]
    act = "call you" if kind == VisitKind.CALL else "see you"
    when = "as soon as possible" if due <= facts.now else f"by {when_text(due)}"
    sentences.append(f"Your care team would like to {act} {when}.")
    return " ".join(s for s in sentences if s)


def when_text(due: datetime) -> str:
    """A due date for people: '8 December 2026'."""
    return f"{due.day} {due:%B %Y}"


def _sentence(facts: CadenceFacts, reason: Reason) -> str:
    target = f"{facts.target[0]:.0f}/{facts.target[1]:.0f} mmHg"
    whose = "your agreed target" if facts.target_from_goal else "the usual home target"
    mean = (
        f"{facts.sbp_7d:.0f}/{facts.dbp_7d:.0f} mmHg"
        if facts.sbp_7d is not None and facts.dbp_7d is not None
        else ""
    )
    if reason is Reason.CRISIS_ALERT:
        return "Your home readings showed a very high blood pressure that needs a prompt review."
    if reason is Reason.LOW_BP_ALERT:
        return "Your blood pressure has been low, which needs a prompt review."
    if reason is Reason.UNCONTROLLED:
        return (
            f"Your home blood pressure averaged {mean} over the last 7 days, not yet below "
            f"{whose} of {target}."
        )
    if reason is Reason.RECENT_CHANGE:
        days = (facts.now - facts.last_change_at).days if facts.last_change_at else 0
        when = "today" if days == 0 else "1 day ago" if days == 1 else f"{days} days ago"
        return (
            f"Your blood pressure medicine (or its dose) changed {when}; a review checks "
            "how it works for you."
        )
    if reason is Reason.POOR_ADHERENCE:
        share = f"{100 * facts.adherence_28d:.0f}%" if facts.adherence_28d is not None else ""
        return (
            f"You took {share} of your doses over the last 4 weeks; a call helps with what "
            "gets in the way before any dose is changed."
        )
    if reason is Reason.INSUFFICIENT_DATA:
        return (
            "There are not enough home readings from the last 7 days to judge your blood "
            f"pressure (at least {MIN_READINGS_7D} on {MIN_DAYS_7D} different days)."
        )
    if reason is Reason.CONTROLLED:
        return f"Your home blood pressure averaged {mean}, below {whose} of {target}."
    return (
        f"Your home blood pressure has stayed below {whose} of {target} for at least "
        f"{STABLE_DAYS} days, with no dose change."
    )
