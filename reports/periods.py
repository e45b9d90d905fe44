"""Report periods from what people type: dates or times, calendar months, limits (pure)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Final

from reports.models import Period

MAX_DAYS: Final = 366  # a report spans at most a (leap) year: bounded work per request
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


class PeriodError(ValueError):
    """A period that cannot be used, with the machine-readable code to answer with."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def parse_instant(value: str, *, name: str) -> datetime:
    """An ISO date (midnight UTC) or date-time (UTC if no offset is given), as UTC."""
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise PeriodError(
            "bad_date", f"{name} must be an ISO date (YYYY-MM-DD) or date-time in UTC"
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def month_period(year: int, month: int) -> Period:
    """The calendar month [1st 00:00 UTC, 1st of the next month)."""
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return Period(start, end)


def parse_month(value: str) -> Period:
    """`YYYY-MM` as its calendar month."""
    match = _MONTH.match(value.strip())
    if match is None or not 1 <= int(match.group(2)) <= 12:
        raise PeriodError("bad_month", "the month must be YYYY-MM")
    return month_period(int(match.group(1)), int(match.group(2)))


def previous_month(now: datetime) -> Period:
    """The last whole calendar month before `now` (UTC)."""
    first = now.astimezone(UTC).replace(day=1)
    before = first - timedelta(days=1)
    return month_period(before.year, before.month)


def parse_period(start: str | None, end: str | None, *, now: datetime) -> Period:
    """The period asked for; both bounds omitted means the last calendar month."""
    if start is None and end is None:
        return previous_month(now)
    if start is None or end is None:
        raise PeriodError("period_incomplete", "give both start and end, or neither")
    begin = parse_instant(start, name="start")
    finish = parse_instant(end, name="end")
    if finish <= begin:
        raise PeriodError("period_empty", "end must be after start")
    if finish - begin > timedelta(days=MAX_DAYS):
        raise PeriodError("period_too_long", f"a report covers at most {MAX_DAYS} days")
    return Period(begin, finish)
