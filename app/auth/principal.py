"""Who is calling: a signed-in user or a device."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class PrincipalKind(StrEnum):
    """What kind of credential authenticated the request."""

    USER = "user"
    DEVICE = "device"
    ANONYMOUS = "anonymous"


class AuthMethod(StrEnum):
    """How the credential was presented; cookie sessions need CSRF checks."""

    BEARER = "bearer"
    COOKIE = "cookie"
    DEVICE_KEY = "device_key"
    NONE = "none"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller, as the enforcement point sees it."""

    kind: PrincipalKind
    id: str
    role: str
    method: AuthMethod
    username: str | None = None
    full_name: str | None = None
    patient_id: str | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)
    session_id: str | None = None
    csrf_token: str | None = None

    @property
    def actor(self) -> str:
        """The audit log's name for this caller, e.g. `user:12` or `device:<uuid>`."""
        return f"{self.kind}:{self.id}"


ANONYMOUS = Principal(PrincipalKind.ANONYMOUS, "-", "anonymous", AuthMethod.NONE)
