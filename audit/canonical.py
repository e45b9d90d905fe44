"""Canonical byte encodings that the audit log hashes and signs.

Both the server and the standalone verifier import this module, so any change here changes
every leaf hash and STH signature: treat the encodings as a frozen wire format.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime

from audit import merkle

__all__ = [
    "ENTRY_FIELDS",
    "STH_SIGNED_FIELDS",
    "canonical_json",
    "entry_leaf_hash",
    "sth_signing_bytes",
]

ENTRY_FIELDS: tuple[str, ...] = (
    "seq",
    "ts",
    "actor",
    "actor_role",
    "action",
    "resource_type",
    "resource_id",
    "patient_id",
    "outcome",
    "request_id",
    "details",
    "prev_leaf_hash",
)

STH_SIGNED_FIELDS: tuple[str, ...] = ("log_id", "tree_size", "root_hash", "timestamp")

_HEX_HASH = re.compile(r"[0-9a-f]{64}")


def canonical_json(obj: object) -> bytes:
    """Encode ``obj`` as sorted-key, compact, UTF-8 JSON (NaN/Infinity rejected)."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def entry_leaf_hash(entry: Mapping[str, object]) -> bytes:
    """Return the Merkle leaf hash of an audit entry's ENTRY_FIELDS (extra keys ignored)."""
    missing = [name for name in ENTRY_FIELDS if name not in entry]
    if missing:
        raise ValueError(f"audit entry is missing field(s): {', '.join(missing)}")
    return merkle.leaf_hash(canonical_json({name: entry[name] for name in ENTRY_FIELDS}))


def _root_hash_hex(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        value = bytes(value).hex()
    # Only one spelling may be signed, or the same STH would have several valid encodings.
    if not isinstance(value, str) or not _HEX_HASH.fullmatch(value):
        raise ValueError("STH root_hash must be 32 bytes or 64 lowercase hex characters")
    return value


def _is_iso_timestamp(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def sth_signing_bytes(sth: Mapping[str, object]) -> bytes:
    """Return the bytes an STH signature covers: canonical JSON of STH_SIGNED_FIELDS."""
    missing = [name for name in STH_SIGNED_FIELDS if name not in sth]
    if missing:
        raise ValueError(f"STH is missing field(s): {', '.join(missing)}")
    log_id, tree_size, timestamp = sth["log_id"], sth["tree_size"], sth["timestamp"]
    if not isinstance(log_id, str) or not _HEX_HASH.fullmatch(log_id):
        raise ValueError("STH log_id must be 64 lowercase hex characters")
    # bool is an int subclass; json would encode True as true, not as a size.
    if not isinstance(tree_size, int) or isinstance(tree_size, bool) or tree_size < 0:
        raise ValueError("STH tree_size must be a non-negative integer")
    if not isinstance(timestamp, str) or not _is_iso_timestamp(timestamp):
        raise ValueError("STH timestamp must be an ISO 8601 string")
    return canonical_json(
        {
            "log_id": log_id,
            "tree_size": tree_size,
            "root_hash": _root_hash_hex(sth["root_hash"]),
            "timestamp": timestamp,
        }
    )
