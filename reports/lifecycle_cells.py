"""Cell formatting shared by the model card, privacy budget, change-control and monitoring
reports (pure, except `Actors`, which reads user names): every value these reports show
becomes a string here, so the same figure reads the same in each of them and in every format."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy.orm import Session

from app.auth.models import Role, User

NONE: Final = "n/a"
# Nested evidence (gate measurements, rollout analyses) is flattened to "a.b=value" pairs;
# lists longer than this and long strings are left out of a cell (the evidence file has them).
_MAX_LIST: Final = 4
_MAX_TEXT: Final = 60


def when(value: datetime | None) -> str:
    """A UTC time to the second, ISO 8601 with Z (n/a when absent)."""
    if value is None:
        return NONE
    if value.tzinfo is None:
        raise ValueError("naive datetime")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def num(value: Any, digits: int = 6) -> str:
    """A number to `digits` significant digits; booleans as yes/no; n/a when absent."""
    if value is None:
        return NONE
    if isinstance(value, bool):
        return yes_no(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return NONE
        return f"{value:.{digits}g}"
    return str(value)


def pct(part: int, whole: int) -> str:
    """A share as a percentage to one decimal (n/a of nothing)."""
    if whole <= 0:
        return NONE
    return f"{100.0 * part / whole:.1f}%"


def yes_no(value: bool | None) -> str:
    """yes, no, or n/a."""
    if value is None:
        return NONE
    return "yes" if value else "no"


def minutes(value: timedelta) -> str:
    """A duration in minutes to one decimal."""
    return f"{value.total_seconds() / 60.0:.1f}"


def short(text: str | None, limit: int = 12) -> str:
    """The start of a long identifier (a hash, a run id), enough to find it again."""
    if not text:
        return NONE
    return text if len(text) <= limit else text[:limit]


def _leaf(value: Any) -> str | None:
    if isinstance(value, str):
        return value if len(value) <= _MAX_TEXT else None
    if isinstance(value, list | tuple):
        if len(value) > _MAX_LIST or any(isinstance(v, dict | list) for v in value):
            return None
        return "[" + ", ".join(num(v) for v in value) + "]"
    return num(value)


def flatten(doc: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Scalar leaves of nested evidence as (dotted key, value) pairs, in order (pure)."""
    out: list[tuple[str, str]] = []
    for key, value in doc.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.extend(flatten(value, prefix=f"{path}."))
            continue
        shown = _leaf(value)
        if shown is not None:
            out.append((path, shown))
    return out


def pick(doc: Mapping[str, Any], paths: Sequence[str]) -> list[tuple[str, str]]:
    """The named dotted paths of nested evidence, flattened where they hold mappings (pure);
    absent paths are skipped."""
    out: list[tuple[str, str]] = []
    for path in paths:
        node: Any = doc
        for part in path.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is None:
            continue
        if isinstance(node, Mapping):
            out.extend(flatten(node, prefix=f"{path}."))
        else:
            shown = _leaf(node)
            if shown is not None:
                out.append((path, shown))
    return out


def pairs(items: Sequence[tuple[str, str]]) -> str:
    """(key, value) pairs as one cell: `key=value; key=value`."""
    return "; ".join(f"{k}={v}" for k, v in items) or NONE


class Actors:
    """How an actor name (`user:12`, `cli:ops`, `system:rollout`) is shown: users by name,
    username and role, looked up once each. Patients are never named (a report carries no
    patient identifiers)."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._seen: dict[str, str] = {}

    def __call__(self, actor: str | None) -> str:
        """The printable form of an actor name."""
        if not actor:
            return NONE
        if actor not in self._seen:
            self._seen[actor] = self._lookup(actor)
        return self._seen[actor]

    def user(self, user_id: int | None) -> str:
        """The printable form of a user id."""
        return NONE if user_id is None else self(f"user:{user_id}")

    def _lookup(self, actor: str) -> str:
        kind, _, ident = actor.partition(":")
        if kind != "user" or not ident.isdigit():
            return actor
        user = self._session.get(User, int(ident))
        if user is None:
            return f"{actor} (unknown user)"
        if user.role == Role.PATIENT:
            return f"{actor} (patient)"
        return f"{user.full_name} ({user.username}, {user.role})"
