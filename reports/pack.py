"""The monthly compliance pack: every report of a calendar month in every format, the
verifiable audit-trail export and the FHIR evidence, in one folder with a signed manifest.

`<base>/<YYYY-MM>/` holds `reports/` (each report as HTML, PDF and CSV), `audit-trail-export/`
(the files of `reports.audit_export`, checked offline with the verifier), `fhir/`
(AuditEvent and Provenance as Bulk Data NDJSON, and a Bundle), `public_key.pem` (the audit
signing key's public half), `manifest.json` (every other file's path, SHA-256 and size) and
`manifest.sig` (the raw 64-byte Ed25519 signature of the exact bytes of manifest.json, by the
audit signing key, as `openssl pkeyutl -verify -rawin` checks it).

The folder is written under a temporary name and renamed when complete, so a pack folder is
whole or absent. The caller audits the pack (`audit_details`) and commits.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core import clock
from app.core.config import Settings
from audit import keys
from audit.models import AuditEntry, Outcome
from reports import audit_export, exports, fhir
from reports.catalogue import CATALOGUE
from reports.models import Filters, Period, ReportFormat

MANIFEST: Final = "manifest.json"
SIGNATURE: Final = "manifest.sig"
PUBLIC_KEY: Final = "public_key.pem"
REPORTS_DIR: Final = "reports"
AUDIT_DIR: Final = "audit-trail-export"
FHIR_DIR: Final = "fhir"
SUBFOLDER: Final = "compliance"  # under the data directory


class PackExists(FileExistsError):
    """The month's pack folder is already there (packs are never overwritten)."""


@dataclass(frozen=True)
class Pack:
    """A written pack: where, its manifest's bytes and what the audit entry records."""

    folder: Path
    manifest: bytes
    files: int
    skipped: tuple[str, ...]

    @property
    def manifest_sha256(self) -> str:
        """SHA-256 of manifest.json, lowercase hex."""
        return hashlib.sha256(self.manifest).hexdigest()

    def audit_details(self, month: str) -> dict[str, Any]:
        """What the pack's audit entry records (`report.pack`)."""
        return {
            "month": month,
            "folder": self.folder.name,
            "files": self.files,
            "manifest_sha256": self.manifest_sha256,
            "skipped": list(self.skipped),
        }


def month_label(period: Period) -> str:
    """`YYYY-MM` of a calendar-month period."""
    return period.start.strftime("%Y-%m")


def default_base(data_dir: Path) -> Path:
    """Where packs go unless told otherwise: `<data_dir>/compliance`."""
    return data_dir / SUBFOLDER


def sign_manifest(manifest: bytes, key: Ed25519PrivateKey) -> bytes:
    """The raw Ed25519 signature of the manifest's exact bytes."""
    return key.sign(manifest)


def verify_manifest(folder: Path, public_key: Ed25519PublicKey) -> list[str]:
    """Check a pack folder offline: the signature, then every file's hash and size; returns
    the problems found (empty: the pack is intact)."""
    from cryptography.exceptions import InvalidSignature

    manifest = (folder / MANIFEST).read_bytes()
    problems: list[str] = []
    try:
        public_key.verify((folder / SIGNATURE).read_bytes(), manifest)
    except InvalidSignature:
        problems.append("manifest.sig does not verify with the public key")
    listed = json.loads(manifest)["files"]
    for item in listed:
        path = folder / item["path"]
        if not path.is_file():
            problems.append(f"{item['path']}: missing")
            continue
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != item["sha256"] or len(data) != item["bytes"]:
            problems.append(f"{item['path']}: hash or size differs")
    on_disk = {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name not in (MANIFEST, SIGNATURE)
    }
    problems += [
        f"{extra}: not in the manifest" for extra in sorted(on_disk - {i["path"] for i in listed})
    ]
    return problems


def audited(session: Session, folder: Path) -> bool:
    """Whether a `report.pack` audit entry records this folder's manifest (by its hash)."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    hit = session.scalars(
        select(col(AuditEntry.seq)).where(
            col(AuditEntry.action) == "report.pack",
            col(AuditEntry.outcome) == Outcome.SUCCESS,
            col(AuditEntry.details).contains(digest),
        )
    ).first()
    return hit is not None


def set_aside(folder: Path, *, now: datetime) -> Path:
    """Move a pack folder no audit entry records out of the way (kept, hidden, for review)."""
    aside = folder.with_name(f".{folder.name}.unaudited-{now:%Y%m%dT%H%M%SZ}")
    folder.rename(aside)
    return aside


def _write(root: Path, relative: str, data: bytes, listed: list[dict[str, Any]]) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    listed.append(
        {"path": relative, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    )


def write_pack(
    session: Session,
    *,
    reader: Session,
    period: Period,
    base: Path,
    signing_key: Ed25519PrivateKey,
    generated_by: str,
    now: datetime,
    settings: Settings,
) -> Pack:
    """Write the month's pack under `base` (see the module docstring).

    Reports and FHIR are read on `reader` (a read-only session keeps the writer slot free
    while PDFs render); the audit-trail export runs on `session`, where a tree head covering
    the month is signed if none does yet. Raises PackExists if the folder is there.
    """
    month = month_label(period)
    target = base / month
    if target.exists():
        raise PackExists(f"the pack for {month} already exists at {target}")
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{month}-", dir=base))
    listed: list[dict[str, Any]] = []
    skipped: list[str] = []
    try:
        for entry in CATALOGUE:
            for fmt in ReportFormat:
                try:
                    made = exports.report_file(
                        reader,
                        kind=entry.kind,
                        fmt=fmt,
                        period=period,
                        filters=Filters(),
                        generated_by=generated_by,
                        now=now,
                        settings=settings,
                    )
                except exports.ExportRefused as exc:
                    skipped.append(f"{entry.kind}.{fmt}: {exc.code}")
                    continue
                _write(staging, f"{REPORTS_DIR}/{made.filename}", made.body, listed)
        for name, data in sorted(
            fhir.export(reader, period=period, filters=Filters(), now=now).files.items()
        ):
            _write(staging, f"{FHIR_DIR}/{name}", data, listed)
        reader.rollback()
        try:
            built = audit_export.export(
                session,
                period=period,
                filters=Filters(),
                public_key=signing_key.public_key(),
                now=now,
                generated_by=generated_by,
                signing_key=signing_key,
            )
        except audit_export.NothingToExport:
            skipped.append(f"{AUDIT_DIR}: nothing_to_export")
        else:
            for name, data in sorted(built.files.items()):
                _write(staging, f"{AUDIT_DIR}/{name}", data, listed)
        _write(staging, PUBLIC_KEY, keys.public_key_pem(signing_key), listed)
        document = {
            "pack": "clinaiops-compliance-pack",
            "month": month,
            "period_start": clock.iso(period.start),
            "period_end": clock.iso(period.end),
            "generated_at": clock.iso(now),
            "generated_by": generated_by,
            "signature": {"algorithm": "Ed25519", "file": SIGNATURE, "public_key": PUBLIC_KEY},
            "skipped": skipped,
            "files": sorted(listed, key=lambda item: str(item["path"])),
        }
        manifest = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")
        (staging / MANIFEST).write_bytes(manifest)
        (staging / SIGNATURE).write_bytes(sign_manifest(manifest, signing_key))
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Pack(target, manifest, len(listed), tuple(skipped))
