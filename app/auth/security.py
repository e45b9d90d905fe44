"""Credential primitives: argon2 passwords, JWT access tokens, device keys, session tokens."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from app.core import clock
from app.core.config import Settings

DEVICE_KEY_PREFIX = "cdk_"
_JWT_ALG = "HS256"
# A fixed hash to verify against when the username is unknown, so timing does not reveal it.
_DUMMY_PASSWORD = "not-a-real-password"  # noqa: S105


@lru_cache(maxsize=4)
def _hasher(time_cost: int, memory_kib: int) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=1)


def password_hasher(settings: Settings) -> PasswordHasher:
    """The argon2id hasher configured by settings."""
    return _hasher(settings.argon2_time_cost, settings.argon2_memory_kib)


def hash_password(password: str, settings: Settings) -> str:
    """Hash a password with argon2id."""
    return password_hasher(settings).hash(password)


def verify_password(password: str, hashed: str | None, settings: Settings) -> bool:
    """Check a password; with no hash, still spend the time a real check would."""
    hasher = password_hasher(settings)
    if hashed is None:
        _dummy_check(hasher)
        return False
    try:
        return hasher.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


def _dummy_check(hasher: PasswordHasher) -> None:
    with contextlib.suppress(VerificationError):
        hasher.verify(_dummy_hash(hasher), "wrong")


@lru_cache(maxsize=4)
def _dummy_hash_cached(time_cost: int, memory_kib: int) -> str:
    return _hasher(time_cost, memory_kib).hash(_DUMMY_PASSWORD)


def _dummy_hash(hasher: PasswordHasher) -> str:
    return _dummy_hash_cached(hasher.time_cost, hasher.memory_cost)


@dataclass(frozen=True)
class IssuedToken:
    """A freshly minted access token."""

    token: str
    expires_in: int
    scopes: frozenset[str]


def create_access_token(
    *, user_id: int, role: str, scopes: frozenset[str], settings: Settings
) -> IssuedToken:
    """Mint a short-lived HS256 JWT carrying the user id, role and SMART-style scopes."""
    now = clock.utcnow()
    lifetime = timedelta(minutes=settings.access_token_minutes)
    claims = {
        "iss": settings.jwt_issuer,
        "sub": str(user_id),
        "role": role,
        "scope": " ".join(sorted(scopes)),
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int((now + lifetime).timestamp()),
        "jti": secrets.token_hex(8),
    }
    token = jwt.encode(claims, settings.secret_key, algorithm=_JWT_ALG)
    return IssuedToken(token, int(lifetime.total_seconds()), scopes)


class TokenInvalid(ValueError):
    """Raised for any token that must not be honoured; `code` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def decode_access_token(token: str, settings: Settings) -> dict[str, Any]:
    """Verify signature, issuer and lifetime (with the configured clock skew)."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            settings.secret_key,
            algorithms=[_JWT_ALG],
            issuer=settings.jwt_issuer,
            leeway=settings.clock_skew_seconds,
            options={"require": ["exp", "iat", "sub", "iss"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenInvalid("token_expired", "the access token has expired") from exc
    except jwt.PyJWTError as exc:
        raise TokenInvalid("token_invalid", "the access token is not valid") from exc
    # PyJWT checks exp against the wall clock; check it against ours too so tests and a
    # skewed host agree on expiry.
    now = clock.utcnow().timestamp()
    if claims["exp"] + settings.clock_skew_seconds < now:
        raise TokenInvalid("token_expired", "the access token has expired")
    return claims


@dataclass(frozen=True)
class DeviceKey:
    """A device API key: shown once, stored as prefix + SHA-256 of the whole key."""

    key: str
    prefix: str
    key_hash: str


def new_device_key() -> DeviceKey:
    """Generate a device key `cdk_<prefix>_<secret>` with 256 bits of secret."""
    prefix = secrets.token_hex(8)
    key = f"{DEVICE_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    return DeviceKey(key, prefix, hash_device_key(key))


def hash_device_key(key: str) -> str:
    """SHA-256 is enough here: the key is random, not a human-chosen password."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_device_key(key: str) -> str | None:
    """Return the lookup prefix of a well-formed device key, else None."""
    if not key.startswith(DEVICE_KEY_PREFIX):
        return None
    prefix, sep, secret = key[len(DEVICE_KEY_PREFIX) :].partition("_")
    if not sep or len(prefix) != 16 or not secret:
        return None
    return prefix


def device_key_matches(key: str, stored_hash: str) -> bool:
    """Compare in constant time."""
    return hmac.compare_digest(hash_device_key(key), stored_hash)


def new_session_token() -> tuple[str, str]:
    """A portal session token and the hash stored for it."""
    token = secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode()).hexdigest()


def session_token_hash(token: str) -> str:
    """The stored form of a session token."""
    return hashlib.sha256(token.encode()).hexdigest()
