"""SMART-on-FHIR style scopes carried in access tokens (pure functions)."""

from __future__ import annotations

# What each role's token may carry at most; a client may ask for fewer.
ROLE_SCOPES: dict[str, frozenset[str]] = {
    "patient": frozenset(
        {
            "patient/Patient.rs",
            "patient/Observation.crs",
            "patient/MedicationRequest.rsu",
            "patient/CarePlan.rs",
            "patient/Device.rsu",
            "patient/Goal.rsu",
            "patient/Appointment.rs",
            "patient/Communication.crs",
        }
    ),
    "clinician": frozenset(
        {
            "user/Patient.rs",
            "user/Observation.rs",
            "user/MedicationRequest.cruds",
            "user/CarePlan.cruds",
            "user/Device.cruds",
            "user/Goal.cruds",
            "user/Appointment.rsu",
            "user/Communication.crs",
        }
    ),
    # Auditors read quarantined readings (rejected-data review), never write.
    "auditor": frozenset({"user/AuditEvent.rs", "user/Provenance.rs", "user/Observation.r"}),
    "ml_engineer": frozenset({"user/Model.cruds"}),
    "admin": frozenset(
        {
            "user/User.cruds",
            "user/CareTeam.cruds",
            "user/Device.cruds",
            "user/Patient.c",
            "user/AuditEvent.c",
        }
    ),
}

# Which SMART resource type guards each policy resource; others are role-checked only.
RESOURCE_TYPES: dict[str, str] = {
    "patient": "Patient",
    "audit": "AuditEvent",
    "audit_proof": "AuditEvent",
    "audit_export": "AuditEvent",
    "user": "User",
    "care_team": "CareTeam",
    "device": "Device",
    "patient_registration": "Patient",
    "observation": "Observation",
    "readings": "Observation",
    "quarantine": "Observation",
    "recommendation": "MedicationRequest",
    "medication_request": "MedicationRequest",
    "trends": "Observation",
    # Clinician review: proposals are MedicationRequests, an envelope is part of the care plan.
    "proposal": "MedicationRequest",
    "envelope": "CarePlan",
    # Patient-clinician loop: FHIR's own types for each; a symptom report is an Observation.
    "goal": "Goal",
    "care_plan": "CarePlan",
    "visit": "Appointment",
    "previsit_summary": "Appointment",
    "message": "Communication",
    "symptom": "Observation",
}

ACTION_PERMISSIONS: dict[str, str] = {
    "read": "r",
    "list": "s",
    "create": "c",
    "update": "u",
    "delete": "d",
    # Administration changes things: it needs the update permission on the type.
    "manage": "u",
    "checkpoint": "c",
    "search": "s",
    "revoke": "u",
    "respond": "u",
    "review": "r",
    "claim": "u",
    "decide": "u",
    "write": "u",
    "panel": "s",
    "send": "c",
    "report": "c",
}


def grant(role: str, requested: str | None) -> frozenset[str]:
    """The scopes to put in a token: the role's, narrowed to those requested if any."""
    allowed = ROLE_SCOPES.get(role, frozenset())
    if not requested:
        return allowed
    asked = frozenset(requested.split())
    return frozenset(s for s in allowed if s in asked)


def permits(scopes: frozenset[str], resource: str, action: str) -> bool:
    """True when the token's scopes cover `action` on `resource` (or no scope guards it)."""
    fhir_type = RESOURCE_TYPES.get(resource)
    perm = ACTION_PERMISSIONS.get(action)
    if fhir_type is None or perm is None:
        return True
    for scope in scopes:
        context, _, rest = scope.partition("/")
        rtype, _, perms = rest.partition(".")
        if context in {"patient", "user", "system"} and rtype in {fhir_type, "*"} and perm in perms:
            return True
    return False
