"""Compliance evidence as FHIR R4: AuditEvent per audit entry, Provenance per AI proposal and
per signed clinician decision; as Bulk Data NDJSON (one file per resource type) or a Bundle.

Every resource is validated with fhir.resources' R4B models (wire-compatible with R4) before
it is returned. Codes come from the standard audit code systems where one fits:

- AuditEvent.type: `rest` (audit-event-type) for an act over the API, with the FHIR
  restful-interaction as subtype; DICOM (DCM) 110114 User Authentication (subtypes 110122
  Login, 110123 Logout), 110101 Audit Log Used, 110106 Export, 110110 Patient Record and
  110100 Application Activity otherwise. The log's own action (`patient.read`) is always a
  further subtype, in the `urn:clinaiops:audit-action` system.
- AuditEvent.action C/R/U/D/E from the action's verb; outcome 0 (success), 4 (denied),
  8 (failed); source type 4 (Application Server); entity type and role from audit-entity-type
  and object-role.
- The audit entry itself is an entity whose details carry its `seq`, `leaf_hash`,
  `prev_leaf_hash` and `request_id`, so an AuditEvent can be tied back to the signed log.
- Provenance signatures are typed with ASTM E1762 (urn:iso-astm:E1762-95:2013) codes:
  1.2.840.10065.1.12.1.5 Verification (approve), .16 Modification (modify), .13 Review
  (reject); agents typed with provenance-participant-type (author, verifier).

Entry `details` are not copied (they may hold free text), apart from a denial's or failure's
problem code. Patients appear by id (as in every FHIR surface of the service) with their
pseudonym as display, never by name.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, cast

from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.provenance import Provenance
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session
from sqlmodel import Session as SQLModelSession
from sqlmodel import col

from app.auth.models import Role, User
from app.core import clock
from app.patients.models import Patient
from audit import service as audit
from audit.models import AuditEntry, Outcome
from loops.models import Proposal
from loops.review.models import Decision, DecisionKind
from mlops.models import ModelVersion
from reports.audit_export import entry_conditions
from reports.models import Filters, Period
from reports.trail_cells import actor_keys, patient_of

# Standard code systems.
AUDIT_EVENT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION: Final = "http://hl7.org/fhir/restful-interaction"
DICOM: Final = "http://dicom.nema.org/resources/ontology/DCM"
SOURCE_TYPE: Final = "http://terminology.hl7.org/CodeSystem/security-source-type"
ENTITY_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE: Final = "http://terminology.hl7.org/CodeSystem/object-role"
AGENT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
PARTICIPANT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DATA_OPERATION: Final = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PURPOSE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
SIGNATURE_TYPE: Final = "urn:iso-astm:E1762-95:2013"
# This service's own identifiers and codes.
ACTION_SYSTEM: Final = "urn:clinaiops:audit-action"
ACTOR_SYSTEM: Final = "urn:clinaiops:actor"
ROLE_SYSTEM: Final = "urn:clinaiops:role"
LOG_SYSTEM: Final = "urn:clinaiops:audit-log"
MODEL_SYSTEM: Final = "urn:clinaiops:model"
ARTIFACT_SYSTEM: Final = "urn:clinaiops:model-artifact-sha256"
FEATURES_SYSTEM: Final = "urn:clinaiops:feature-hash"
EXTENSION: Final = "urn:clinaiops:fhir:extension"
OBSERVER: Final = {
    "type": "Device",
    "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:clinaiops:server"},
    "display": "ClinAIOps",
}


class BundleType(StrEnum):
    """The Bundle types an export can take."""

    COLLECTION = "collection"
    SEARCHSET = "searchset"


# --- AuditEvent ----------------------------------------------------------------------------

_SEARCH_VERBS = frozenset({"list", "search", "inbox", "panel", "queue", "due_list", "logs"})
_READ_VERBS = frozenset({"read", "print", "detail", "history"})
_CREATE_VERBS = frozenset(
    {"create", "register", "ingest", "propose", "send", "report", "log", "note", "version"}
    | {"add_member", "train", "signoff", "signed", "record"}
)
_DELETE_VERBS = frozenset({"delete", "remove"})
_EXECUTE_VERBS = frozenset(
    {"login", "portal_login", "portal_logout", "denied", "checkpoint", "verify", "evaluate"}
    | {"gates", "validate", "run", "tick"}
)
_INTERACTION = {"C": "create", "R": "read", "U": "update", "D": "delete", "E": "operation"}
_OUTCOME = {Outcome.SUCCESS: "0", Outcome.DENIED: "4", Outcome.FAILURE: "8"}
_OUTCOME_TEXT = {"0": "Success", "4": "Minor failure", "8": "Serious failure"}
# Internal resource types that are FHIR resources of the service (a proposal is served as
# a MedicationRequest with the proposal's id).
_FHIR_TYPES = {
    "patient": "Patient",
    "proposal": "MedicationRequest",
    "medication_request": "MedicationRequest",
    "care_plan": "CarePlan",
    "observation": "Observation",
    "goal": "Goal",
}
_ROLE_OF_RESOURCE = {"patient": ("1", "Patient"), "user": ("11", "Security User Entity")}
_AGENT_TYPES = {
    "humanuser": "human user",
    "datacollector": "data collector",
    "dataprocessor": "data processor",
}
_DCM = {
    "110100": "Application Activity",
    "110101": "Audit Log Used",
    "110106": "Export",
    "110110": "Patient Record",
    "110114": "User Authentication",
    "110122": "Login",
    "110123": "Logout",
}


def _verb(action: str) -> str:
    return action.rsplit(".", 1)[-1]


def action_code(action: str) -> str:
    """FHIR AuditEvent.action for a log action: C, R, U, D or E (queries and functions)."""
    verb = _verb(action)
    if verb in _SEARCH_VERBS or verb in _EXECUTE_VERBS:
        return "E"
    if verb in _READ_VERBS:
        return "R"
    if verb in _CREATE_VERBS:
        return "C"
    if verb in _DELETE_VERBS:
        return "D"
    # Every other verb of the service changes something that exists (acknowledge, decide,
    # withdraw, rollback, ...).
    return "U"


def _dcm(code: str) -> dict[str, str]:
    return {"system": DICOM, "code": code, "display": _DCM[code]}


def event_type(entry: AuditEntry) -> tuple[dict[str, str], list[dict[str, str]]]:
    """AuditEvent.type and the standard subtypes (before the service's own action code)."""
    action, verb = entry.action, _verb(entry.action)
    if action.startswith("auth."):
        return _dcm("110114"), [_dcm("110123" if verb.endswith("logout") else "110122")]
    if verb == "export" or entry.resource_type.endswith("export"):
        return _dcm("110106"), []
    if action.startswith(("audit.", "audit_")):
        return _dcm("110101"), []
    if entry.request_id is not None:
        code = action_code(action)
        interaction = "search-type" if _verb(action) in _SEARCH_VERBS else _INTERACTION[code]
        rest = {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"}
        return rest, [{"system": RESTFUL_INTERACTION, "code": interaction, "display": interaction}]
    return _dcm("110110" if entry.patient_id else "110100"), []


@dataclass(frozen=True)
class _People:
    """What agents and entities show of users and patients (no names of patients)."""

    users: Mapping[int, User]
    pseudonyms: Mapping[str, str]

    @classmethod
    def load(
        cls, session: Session, *, user_ids: Iterable[int], patient_ids: Iterable[str | None]
    ) -> _People:
        users = {
            int(u.id or 0): u
            for u in session.scalars(select(User).where(col(User.id).in_(set(user_ids))))
        }
        wanted = {p for p in patient_ids if p} | {
            u.patient_id for u in users.values() if u.patient_id
        }
        rows = session.execute(
            select(col(Patient.id), col(Patient.pseudonym)).where(col(Patient.id).in_(wanted))
        )
        return cls(users, {str(pid): str(name) for pid, name in rows})

    def patient(self, patient_id: str) -> dict[str, str]:
        ref = {"reference": f"Patient/{patient_id}"}
        name = self.pseudonyms.get(patient_id)
        return ref | ({"display": name} if name else {})

    def actor(self, actor: str) -> tuple[dict[str, Any], str]:
        """The actor as a Reference and its extra-security-role-type code."""
        kind, _, ident = actor.partition(":")
        user = self.users.get(int(ident)) if kind == "user" and ident.isdigit() else None
        if user is not None and user.role == Role.PATIENT and user.patient_id:
            return self.patient(user.patient_id), "humanuser"
        logical: dict[str, Any] = {"identifier": {"system": ACTOR_SYSTEM, "value": actor}}
        if user is not None:
            return logical | {"type": "Practitioner", "display": user.username}, "humanuser"
        if kind == "device":
            return logical | {"type": "Device", "display": actor}, "datacollector"
        if kind == "system":
            return logical | {"type": "Device", "display": actor}, "dataprocessor"
        return logical | {"display": actor}, "humanuser"  # cli:<OS user>, anonymous


def _user_id(actor: str) -> int | None:
    kind, _, ident = actor.partition(":")
    return int(ident) if kind == "user" and ident.isdigit() else None


def _listed_patients(entry: AuditEntry) -> list[str]:
    """Patients a listing showed (`details.patient_ids`), besides the entry's own patient."""
    try:
        details = json.loads(entry.details)
    except ValueError:
        return []
    ids = details.get("patient_ids") if isinstance(details, dict) else None
    if not isinstance(ids, list):
        return []
    return [i for i in ids if isinstance(i, str) and i and i != entry.patient_id]


def _problem_code(entry: AuditEntry) -> str | None:
    try:
        details = json.loads(entry.details)
    except ValueError:
        return None
    code = details.get("code") if isinstance(details, dict) else None
    return code if isinstance(code, str) else None


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def _resource_entity(entry: AuditEntry) -> dict[str, Any] | None:
    if entry.resource_id is None:
        return None
    fhir_type = _FHIR_TYPES.get(entry.resource_type)
    what: dict[str, Any] = (
        {"reference": f"{fhir_type}/{entry.resource_id}"}
        if fhir_type
        else {
            "identifier": {
                "system": f"urn:clinaiops:{entry.resource_type}",
                "value": entry.resource_id,
            }
        }
    )
    code, display = _ROLE_OF_RESOURCE.get(entry.resource_type, ("4", "Domain Resource"))
    kind = ("1", "Person") if code == "1" else ("2", "System Object")
    return {
        "what": what,
        "type": _coding(ENTITY_TYPE, *kind),
        "role": _coding(OBJECT_ROLE, code, display),
        "name": entry.resource_type,
    }


def _log_entity(entry: AuditEntry, log_id: str | None) -> dict[str, Any]:
    details = [
        {"type": "seq", "valueString": str(entry.seq)},
        {"type": "leaf_hash", "valueString": entry.leaf_hash},
        {"type": "action", "valueString": entry.action},
    ]
    if entry.prev_leaf_hash:  # empty for entry 1, and FHIR strings may not be empty
        details.append({"type": "prev_leaf_hash", "valueString": entry.prev_leaf_hash})
    if entry.request_id:
        details.append({"type": "request_id", "valueString": entry.request_id})
    system = f"{LOG_SYSTEM}:{log_id}" if log_id else LOG_SYSTEM
    return {
        "what": {"identifier": {"system": system, "value": str(entry.seq)}},
        "type": _coding(ENTITY_TYPE, "2", "System Object"),
        "role": _coding(OBJECT_ROLE, "13", "Security Resource"),
        "name": "audit log entry",
        "description": "The signed audit log's entry this event was made from (RFC 9162 leaf "
        "seq - 1; leaf_hash = SHA-256(0x00 || canonical entry))",
        "detail": details,
    }


def _audit_event(entry: AuditEntry, people: _People, log_id: str | None) -> dict[str, Any]:
    type_, subtypes = event_type(entry)
    who, agent_type = people.actor(entry.actor)
    outcome = _OUTCOME.get(Outcome(entry.outcome), "8")
    entities: list[dict[str, Any]] = []
    for pid in ([entry.patient_id] if entry.patient_id else []) + _listed_patients(entry):
        entities.append(
            {
                "what": people.patient(pid),
                "type": _coding(ENTITY_TYPE, "1", "Person"),
                "role": _coding(OBJECT_ROLE, "1", "Patient"),
            }
        )
    resource = _resource_entity(entry)
    if resource is not None and not (
        entry.resource_type == "patient" and entry.resource_id == entry.patient_id
    ):
        entities.append(resource)
    entities.append(_log_entity(entry, log_id))
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"audit-{entry.seq}",
        "type": type_,
        "subtype": [*subtypes, {"system": ACTION_SYSTEM, "code": entry.action}],
        "action": action_code(entry.action),
        "recorded": clock.iso(entry.ts),
        "outcome": outcome,
        "agent": [
            {
                "type": {"coding": [_coding(AGENT_TYPE, agent_type, _AGENT_TYPES[agent_type])]},
                "role": [
                    {
                        "coding": [{"system": ROLE_SYSTEM, "code": entry.actor_role}],
                        "text": entry.actor_role,
                    }
                ],
                "who": who,
                "requestor": True,
            }
        ],
        "source": {
            "site": "ClinAIOps",
            "observer": OBSERVER,
            "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
        },
        "entity": entities,
    }
    if outcome != "0":
        code = _problem_code(entry)
        event["outcomeDesc"] = f"{entry.outcome}: {code}" if code else str(entry.outcome)
    return _validated(AuditEvent, event)


def audit_events(
    session: Session, entries: Sequence[AuditEntry], *, log_id: str | None = None
) -> list[dict[str, Any]]:
    """AuditEvents (validated, JSON-ready) for audit entries; `log_id` names the signed log."""
    user_ids = {uid for e in entries if (uid := _user_id(e.actor)) is not None}
    patient_ids = {e.patient_id for e in entries} | {
        p for e in entries for p in _listed_patients(e)
    }
    people = _People.load(session, user_ids=user_ids, patient_ids=patient_ids)
    return [_audit_event(e, people, log_id) for e in entries]


def period_entries(session: Session, *, period: Period, filters: Filters) -> list[AuditEntry]:
    """The audit entries of the period under the filters (as the audit-trail report has them)."""
    where = entry_conditions(session, period, filters)
    return list(session.scalars(select(AuditEntry).where(*where).order_by(col(AuditEntry.seq))))


# --- Provenance ----------------------------------------------------------------------------

_SIGNATURE = {
    DecisionKind.APPROVE: ("1.2.840.10065.1.12.1.5", "Verification Signature", "verifier"),
    DecisionKind.MODIFY: ("1.2.840.10065.1.12.1.16", "Modification Signature", "author"),
    DecisionKind.REJECT: ("1.2.840.10065.1.12.1.13", "Review Signature", "verifier"),
}
_PARTICIPANT = {"author": "Author", "verifier": "Verifier"}


def _model_device(label: str, version: ModelVersion | None) -> dict[str, Any]:
    """The model version as a contained Device."""
    name, _, number = label.rpartition(":v")
    identifiers = [{"system": MODEL_SYSTEM, "value": label}]
    if version is not None:
        identifiers.append({"system": ARTIFACT_SYSTEM, "value": version.artifact_sha256})
    device: dict[str, Any] = {
        "resourceType": "Device",
        "id": "model",
        "identifier": identifiers,
        "deviceName": [{"name": name or label, "type": "model-name"}],
        "type": {"text": "Machine-learning titration model (software)"},
    }
    if number.isdigit():
        device["version"] = [{"value": number}]
    if version is not None:
        device["status"] = "inactive" if version.status == "retired" else "active"
        device["note"] = [{"text": f"lifecycle status: {version.status}"}]
    return device


def _model_versions(session: Session, labels: Iterable[str]) -> dict[str, ModelVersion]:
    found: dict[str, ModelVersion] = {}
    for label in set(labels):
        name, _, number = label.rpartition(":v")
        if name and number.isdigit():
            row = session.scalars(
                select(ModelVersion).where(
                    col(ModelVersion.name) == name, col(ModelVersion.version) == int(number)
                )
            ).first()
            if row is not None:
                found[label] = row
    return found


def _participant(code: str) -> dict[str, Any]:
    return {"coding": [_coding(PARTICIPANT_TYPE, code, _PARTICIPANT[code])]}


def _treatment() -> list[dict[str, Any]]:
    return [{"coding": [_coding(PURPOSE, "TREAT", "treatment")]}]


def proposal_provenance(
    proposal: Proposal, *, version: ModelVersion | None, pseudonym: str | None = None
) -> dict[str, Any]:
    """Provenance of an AI proposal: the model version (a contained Device) authored it."""
    patient = {"reference": f"Patient/{proposal.patient_id}"} | (
        {"display": pseudonym} if pseudonym else {}
    )
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": f"proposal-{proposal.id}",
        "contained": [_model_device(proposal.model_version, version)],
        "target": [{"reference": f"MedicationRequest/{proposal.id}"}],
        "occurredDateTime": clock.iso(proposal.created_at),
        "recorded": clock.iso(proposal.created_at),
        "reason": _treatment(),
        "activity": {
            "coding": [_coding(DATA_OPERATION, "CREATE", "create")],
            "text": f"AI titration proposal ({proposal.action}, step {proposal.from_step} -> "
            f"{proposal.to_step}), routed {proposal.route}",
        },
        "agent": [
            {
                "type": _participant("author"),
                "who": {"reference": "#model", "display": proposal.model_version},
                "onBehalfOf": {"display": "ClinAIOps"},
            }
        ],
        "entity": [
            {
                "role": "source",
                "what": {
                    "identifier": {"system": FEATURES_SYSTEM, "value": proposal.feature_hash},
                    "display": "the features the model scored (SHA-256)",
                },
            },
            {"role": "source", "what": patient},
        ],
    }
    if proposal.envelope_version is not None:
        resource["policy"] = [
            f"urn:clinaiops:safety-envelope:{proposal.patient_id}:v{proposal.envelope_version}"
        ]
    return _validated(Provenance, resource)


def decision_provenance(decision: Decision, *, version: ModelVersion | None) -> dict[str, Any]:
    """Provenance of a signed decision: the clinician signed what the model proposed."""
    kind = DecisionKind(decision.kind)
    sig_code, sig_display, participant = _SIGNATURE[kind]
    signer = {
        "type": "Practitioner",
        "identifier": {"system": ACTOR_SYSTEM, "value": f"user:{decision.signer_user_id}"},
        "display": decision.signer_printed_name,
    }
    signed = clock.iso(decision.signed_at)
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": f"decision-{decision.id}",
        "contained": [_model_device(decision.model_version, version)],
        "target": [{"reference": f"MedicationRequest/{decision.proposal_id}"}],
        "occurredDateTime": signed,
        "recorded": signed,
        "reason": _treatment(),
        "activity": {
            "coding": [_coding(DATA_OPERATION, "UPDATE", "revise")],
            "text": f"clinician decision: {kind} (step {decision.from_step} -> "
            f"{decision.decided_step}; proposed {decision.proposed_step})",
        },
        "agent": [
            {
                "type": _participant(participant),
                "role": [{"text": decision.meaning}],
                "who": signer,
            }
        ],
        "entity": [
            {
                "role": "source",
                "what": {
                    "reference": f"MedicationRequest/{decision.proposal_id}",
                    "display": f"the AI proposal by {decision.model_version}",
                },
                "agent": [
                    {
                        "type": _participant("author"),
                        "who": {"reference": "#model", "display": decision.model_version},
                    }
                ],
            }
        ],
        "signature": [
            {
                "type": [{"system": SIGNATURE_TYPE, "code": sig_code, "display": sig_display}],
                "when": signed,
                "who": signer,
                "sigFormat": "application/octet-stream",
                # Ed25519 over the ASCII hex SHA-256 of the canonical decided record.
                "data": base64.b64encode(bytes.fromhex(decision.signature)).decode("ascii"),
                "extension": [
                    {"url": f"{EXTENSION}:signature-meaning", "valueString": decision.meaning},
                    {
                        "url": f"{EXTENSION}:signed-record-sha256",
                        "valueString": decision.record_hash,
                    },
                    {"url": f"{EXTENSION}:signature-key-id", "valueString": decision.key_id},
                ],
            }
        ],
    }
    return _validated(Provenance, resource)


def _model_matches(label: str, model_version: int | None) -> bool:
    return model_version is None or label.endswith(f":v{model_version}")


def provenances(session: Session, *, period: Period, filters: Filters) -> list[dict[str, Any]]:
    """Provenance for the proposals made and the decisions signed in the period.

    Filters: the patient (pseudonym) and model version narrow both; an actor narrows the
    decisions to those the actor signed and leaves out proposals (a model made them).
    """
    reader = cast(SQLModelSession, session)  # the report helpers take sqlmodel's Session
    patient_id = patient_of(reader, filters.patient_id)
    proposal_where: list[ColumnElement[bool]] = [
        col(Proposal.created_at) >= period.start,
        col(Proposal.created_at) < period.end,
    ]
    decision_where: list[ColumnElement[bool]] = [
        col(Decision.signed_at) >= period.start,
        col(Decision.signed_at) < period.end,
    ]
    if patient_id is not None:
        proposal_where.append(col(Proposal.patient_id) == patient_id)
        decision_where.append(col(Decision.patient_id) == patient_id)
    proposals: list[Proposal] = []
    if filters.actor is None:
        proposals = list(
            session.scalars(
                select(Proposal).where(*proposal_where).order_by(col(Proposal.created_at))
            )
        )
    decisions = list(
        session.scalars(select(Decision).where(*decision_where).order_by(col(Decision.signed_at)))
    )
    actors = actor_keys(reader, filters.actor)
    if actors is not None:
        decisions = [
            d
            for d in decisions
            if f"user:{d.signer_user_id}" in actors or d.signer_username in actors
        ]
    proposals = [p for p in proposals if _model_matches(p.model_version, filters.model_version)]
    decisions = [d for d in decisions if _model_matches(d.model_version, filters.model_version)]
    versions = _model_versions(
        session, [p.model_version for p in proposals] + [d.model_version for d in decisions]
    )
    names = _People.load(session, user_ids=(), patient_ids=[p.patient_id for p in proposals])
    out = [
        proposal_provenance(
            p, version=versions.get(p.model_version), pseudonym=names.pseudonyms.get(p.patient_id)
        )
        for p in proposals
    ]
    out += [decision_provenance(d, version=versions.get(d.model_version)) for d in decisions]
    return out


# --- output ----------------------------------------------------------------------------------


def _validated(model: Any, resource: dict[str, Any]) -> dict[str, Any]:
    """The resource as the R4B model accepts and serialises it (raises if it is invalid)."""
    checked = model.model_validate(resource)
    out: dict[str, Any] = checked.model_dump(mode="json", exclude_none=True)
    return out


def ndjson(resources: Iterable[Mapping[str, Any]]) -> dict[str, bytes]:
    """Bulk Data output: one `<ResourceType>.ndjson` file per type, one resource per line."""
    files: dict[str, list[bytes]] = {}
    for resource in resources:
        line = json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        files.setdefault(f"{resource['resourceType']}.ndjson", []).append(line + b"\n")
    return {name: b"".join(lines) for name, lines in files.items()}


def full_url(resource: Mapping[str, Any]) -> str:
    """A stable `urn:uuid:` for a resource in a Bundle (the same resource, the same URL)."""
    name = f"clinaiops:{resource['resourceType']}/{resource['id']}"
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, name)}"


def bundle(
    resources: Sequence[Mapping[str, Any]],
    *,
    now: datetime,
    type_: BundleType = BundleType.COLLECTION,
) -> dict[str, Any]:
    """The resources as one Bundle (collection, or searchset with `total` and match modes)."""
    entries: list[dict[str, Any]] = []
    for resource in resources:
        entry: dict[str, Any] = {"fullUrl": full_url(resource), "resource": dict(resource)}
        if type_ is BundleType.SEARCHSET:
            entry["search"] = {"mode": "match"}
        entries.append(entry)
    document: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": str(type_),
        "timestamp": clock.iso(now),
        "entry": entries,
    }
    if type_ is BundleType.SEARCHSET:
        document["total"] = len(entries)
    return _validated(Bundle, document)


@dataclass(frozen=True)
class FhirExport:
    """The FHIR evidence of a period: its resources and files (name -> bytes)."""

    resources: list[dict[str, Any]]
    files: dict[str, bytes]


BUNDLE_FILE: Final = "bundle.json"


def export(
    session: Session,
    *,
    period: Period,
    filters: Filters,
    now: datetime,
    type_: BundleType = BundleType.COLLECTION,
) -> FhirExport:
    """AuditEvents and Provenances of the period as NDJSON files and one Bundle (reads only)."""
    sth = audit.latest_sth(session)
    events = audit_events(
        session,
        period_entries(session, period=period, filters=filters),
        log_id=None if sth is None else sth.log_id,
    )
    resources = events + provenances(session, period=period, filters=filters)
    files = ndjson(resources)
    document = bundle(resources, now=now, type_=type_)
    files[BUNDLE_FILE] = (json.dumps(document, ensure_ascii=False, indent=1) + "\n").encode()
    return FhirExport(resources, files)
