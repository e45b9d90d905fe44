"""The electronic signature on a decision: the signed record, its hash, sign and verify (pure).

The signed record is the canonical JSON (`audit.canonical.canonical_json`: sorted keys, no
spaces, UTF-8) of `record_document()`. `record_hash` is its SHA-256 in lowercase hex, and the
signature is Ed25519, by the audit signing key, over the 64 ASCII characters of that hex
string. A signature therefore verifies for exactly one record: change a field, or copy the
hash and signature onto another decision, and `verify_signature` fails (21 CFR 11.70).
Signed tree heads are signed over JSON text (it starts with `{`), so a decision signature can
never pass for a tree-head signature, or the other way round.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from app.core import clock
from audit.canonical import canonical_json
from audit.verifier import log_id_for
from loops.review.models import Decision

RECORD_TYPE: Final = "clinaiops.decision/1"
ALGORITHM: Final = "Ed25519"


def record_document(decision: Decision) -> dict[str, Any]:
    """The decided record the signature covers, as plain JSON values."""
    return {
        "type": RECORD_TYPE,
        "decision_id": decision.id,
        "proposal_id": decision.proposal_id,
        "patient_id": decision.patient_id,
        "kind": str(decision.kind),
        "from_step": decision.from_step,
        "proposed_step": decision.proposed_step,
        "decided_step": decision.decided_step,
        "from_dose": decision.from_dose,
        "proposed_dose": decision.proposed_dose,
        "decided_dose": decision.decided_dose,
        "reason_code": decision.reason_code,
        "reason_text": decision.reason_text,
        "feature_hash": decision.feature_hash,
        "model_version": decision.model_version,
        "signer_user_id": decision.signer_user_id,
        "signer_username": decision.signer_username,
        "signer_printed_name": decision.signer_printed_name,
        "meaning": decision.meaning,
        "signed_at": clock.iso(decision.signed_at),
    }


def record_hash(document: dict[str, Any]) -> str:
    """SHA-256 (lowercase hex) of the record's canonical JSON."""
    return hashlib.sha256(canonical_json(document)).hexdigest()


def sign(decision: Decision, key: Ed25519PrivateKey) -> None:
    """Fill in the decision's record hash, signature and key id (the record must be final)."""
    decision.record_hash = record_hash(record_document(decision))
    decision.signature = key.sign(decision.record_hash.encode("ascii")).hex()
    decision.key_id = log_id_for(key.public_key())


def verify_signature(decision: Decision, *, public_key: Ed25519PublicKey) -> bool:
    """True when the record hashes to `record_hash` and `signature` is the key's signature
    over that hash; False for any change, or a hash or signature taken from another record."""
    expected = record_hash(record_document(decision))
    if not hmac.compare_digest(expected, decision.record_hash or ""):
        return False
    try:
        public_key.verify(bytes.fromhex(decision.signature), expected.encode("ascii"))
    except (InvalidSignature, ValueError):
        return False
    return True
