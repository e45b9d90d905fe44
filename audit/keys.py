"""The Ed25519 key that signs tree heads: created once, kept in a 0600 PEM file."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class SigningKeyMissing(RuntimeError):
    """Raised when the signing key file does not exist (run `clinaiops init`)."""


def create_signing_key(path: Path) -> bool:
    """Create the key file if missing; return True when a new key was written."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # O_EXCL: two processes racing at first start must not overwrite each other's key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return True


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the private key, or raise SigningKeyMissing."""
    if not path.exists():
        raise SigningKeyMissing(f"audit signing key not found at {path}; run `clinaiops init`")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyMissing(f"{path} is not an Ed25519 private key")
    return key


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The public half as PEM, for auditors to pin out of band."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
