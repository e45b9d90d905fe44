"""FHIR R4 device payloads: Bundles and resources in, parsed readings and dose events out.

Pure, no I/O. Each resource is judged in two steps:

1. STRUCTURE - `fhir.resources.R4B` (wire-compatible with R4) validates the document; its
   errors become `EntryInvalid("invalid_resource", ...)` with the first error's slash path
   from the resource root (e.g. `component/0/valueQuantity/value`) and every error in the
   message. For plain device Observations `fastpath.fast_accepts` may vouch for the
   structure instead (accept-only: it never rejects, and the result is the same).
2. MEANING - read from the JSON document itself, so both routes through step 1 give the
   same answer. Supported Observations (LOINC, system http://loinc.org, any coding):

   ==================  ===================  ===================================  ========
   kind                codes                units (UCUM code, else unit text)    stored
   ==================  ===================  ===================================  ========
   blood pressure      85354-9, 55284-4;    mm[Hg], mmHg, mm Hg; kPa (converted  mmHg
                       components 8480-6    with MMHG_PER_KPA, rounded to 0.1)
                       (systolic), 8462-4
                       (diastolic), both
                       required
   heart rate          8867-4               /min, {beats}/min, {beat}/min,       /min
                                            beats/min, beats/minute
   step count          41950-7, 55423-8     {steps}, {step}, steps, step, 1,     steps
                                            /d, {steps}/d, /(24.h)
   ==================  ===================  ===================================  ========

   A Quantity's UCUM `code` decides its unit when its `system` is UCUM or absent; otherwise
   its `unit` text does. Values must be JSON numbers (fhir.resources also takes numeric
   strings), finite, below 1e9 in magnitude and without a `comparator`; step counts must
   not be negative. Observation status must be final / amended / corrected / preliminary.
   effective[x]: effectiveDateTime (partial dates keep their precision), effectiveInstant,
   or effectivePeriod with both start and end (an inclusive end: "2012-09-17" ends at the
   end of that day).

Error codes: invalid_resource, unsupported_resource, invalid_bundle,
unsupported_bundle_type, unsupported_code, ambiguous_code, invalid_status, missing_value,
invalid_value, invalid_unit, missing_effective, invalid_datetime.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from fhir.resources.R4B.medicationadministration import MedicationAdministration
from fhir.resources.R4B.observation import Observation
from pydantic import BaseModel, ValidationError

from device_ingest.fastpath import (
    EqualityMemo,
    concept_ok,
    fast_accepts,
    field_ok,
    quantity_unit_ok,
)
from device_ingest.formats import (
    MMHG_PER_KPA,
    UNIT_MMHG,
    UNIT_PER_MIN,
    UNIT_STEPS,
    EffectiveTime,
    EntryInvalid,
    ParsedMedicationEvent,
    ParsedReading,
    Precision,
    ReadingKind,
    parse_fhir_datetime,
)

__all__ = ["EntryRequest", "FhirPayload", "PayloadKind", "parse_payload", "parse_resource"]

PayloadKind = Literal["single", "transaction", "batch", "collection"]

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"

BP_PANEL_CODES = frozenset({"85354-9", "55284-4"})  # HL7 / US Core, Synthea
SYSTOLIC = "8480-6"
DIASTOLIC = "8462-4"
OBSERVATION_CODES: dict[str, ReadingKind] = {
    "85354-9": ReadingKind.BLOOD_PRESSURE,
    "55284-4": ReadingKind.BLOOD_PRESSURE,
    "8867-4": ReadingKind.HEART_RATE,
    "41950-7": ReadingKind.STEP_COUNT,
    "55423-8": ReadingKind.STEP_COUNT,
}
OBSERVATION_STATUSES = frozenset({"final", "amended", "corrected", "preliminary"})

_MMHG = {"mm[Hg]": 1.0, "mmHg": 1.0, "mm Hg": 1.0, "kPa": MMHG_PER_KPA}
_PER_MIN = {u: 1.0 for u in ("/min", "{beats}/min", "{beat}/min", "beats/min", "beats/minute")}
_STEPS = {u: 1.0 for u in ("{steps}", "{step}", "steps", "step", "1", "/d", "{steps}/d")}
_STEPS["/(24.h)"] = 1.0
UNITS: dict[ReadingKind, dict[str, float]] = {
    ReadingKind.BLOOD_PRESSURE: _MMHG,
    ReadingKind.HEART_RATE: _PER_MIN,
    ReadingKind.STEP_COUNT: _STEPS,
}
CANONICAL_UNIT = {
    ReadingKind.BLOOD_PRESSURE: UNIT_MMHG,
    ReadingKind.HEART_RATE: UNIT_PER_MIN,
    ReadingKind.STEP_COUNT: UNIT_STEPS,
}
_MAX_MAGNITUDE = 1e9

_BUNDLE_TYPES: dict[str, PayloadKind] = {
    "transaction": "transaction",
    "batch": "batch",
    "collection": "collection",
}
_HTTP_VERBS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"})
_MAX_ERRORS = 20  # structural errors named in one message
_CHOICE_LIST = re.compile(r"this list \[([^\]]*)\]")


@dataclass(frozen=True, slots=True)
class EntryRequest:
    """A batch / transaction entry's `request`: what the sender asked to be done."""

    method: str
    url: str


@dataclass(frozen=True, slots=True)
class FhirPayload:
    """A request body: one resource, or a Bundle's resources in order.

    `requests` runs parallel to `entries`: the entry's `request` for batch and transaction
    Bundles when it was sent, else None.
    """

    kind: PayloadKind
    entries: list[object]
    requests: list[EntryRequest | None] = field(default_factory=list)


# --------------------------------------------------------------------------- payloads


def parse_payload(obj: object) -> FhirPayload:
    """Split a FHIR request body into its resources; the Bundle envelope is checked here.

    Only the envelope is checked: each resource is left to `parse_resource`, so one bad
    entry of a batch refuses that entry only. Raises EntryInvalid for a body that is not a
    JSON object, has no resourceType, names another resource, or is a malformed Bundle.
    """
    resource_type = _resource_type(obj)
    assert isinstance(obj, dict)
    if resource_type in ("Observation", "MedicationAdministration"):
        return FhirPayload("single", [obj], [None])
    if resource_type != "Bundle":
        raise EntryInvalid(
            "unsupported_resource",
            f"unsupported resourceType {resource_type!r}: send Observation, "
            "MedicationAdministration or a Bundle of them",
            "resourceType",
        )
    bundle_type = obj.get("type")
    if not isinstance(bundle_type, str):
        raise EntryInvalid("invalid_bundle", "a Bundle needs a type", "type")
    if bundle_type not in _BUNDLE_TYPES:
        raise EntryInvalid(
            "unsupported_bundle_type",
            f"unsupported Bundle type {bundle_type!r}: send transaction, batch or collection",
            "type",
        )
    raw_entries = obj.get("entry", [])
    if not isinstance(raw_entries, list):
        raise EntryInvalid("invalid_bundle", "Bundle.entry must be an array", "entry")
    entries: list[object] = []
    requests: list[EntryRequest | None] = []
    for i, entry in enumerate(raw_entries):
        if not isinstance(entry, dict):
            raise EntryInvalid("invalid_bundle", f"entry {i} is not an object", f"entry/{i}")
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            raise EntryInvalid(
                "invalid_bundle", f"entry {i} has no resource object", f"entry/{i}/resource"
            )
        entries.append(resource)
        request = entry.get("request")
        if bundle_type == "collection" or request is None:
            requests.append(None)
        else:
            requests.append(_entry_request(request, f"entry/{i}/request"))
    return FhirPayload(_BUNDLE_TYPES[bundle_type], entries, requests)


def _entry_request(request: object, path: str) -> EntryRequest:
    if not isinstance(request, dict):
        raise EntryInvalid("invalid_bundle", "Bundle.entry.request must be an object", path)
    method, url = request.get("method"), request.get("url")
    if not isinstance(method, str) or method not in _HTTP_VERBS:
        raise EntryInvalid(
            "invalid_bundle", f"not an HTTP verb FHIR knows: {method!r}", f"{path}/method"
        )
    if not isinstance(url, str) or not url:
        raise EntryInvalid("invalid_bundle", "Bundle.entry.request needs a url", f"{path}/url")
    return EntryRequest(method, url)


def _resource_type(obj: object) -> str:
    if not isinstance(obj, dict):
        raise EntryInvalid("invalid_resource", "a FHIR resource must be a JSON object", "")
    resource_type = obj.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        raise EntryInvalid("invalid_resource", "the resource has no resourceType", "resourceType")
    return resource_type


# --------------------------------------------------------------------------- resources


def parse_resource(
    obj: object, *, index: int, fast: bool = True
) -> ParsedReading | ParsedMedicationEvent:
    """Parse one Observation or MedicationAdministration; raise EntryInvalid if it is bad.

    `index` is the entry's position in the request, named in error messages. With `fast`,
    a device-shaped Observation that `fast_accepts` vouches for skips the fhir.resources
    validation; the outcome is the same either way.
    """
    try:
        resource_type = _resource_type(obj)
        assert isinstance(obj, dict)
        if resource_type == "Observation":
            if fast:
                reading = _fused_observation(obj)
                if reading is not None:
                    return reading
            if not (fast and fast_accepts(obj)):
                _validate(Observation, obj)
            return _observation(obj)
        if resource_type == "MedicationAdministration":
            _validate(MedicationAdministration, obj)
            return _medication_administration(obj)
        raise EntryInvalid(
            "unsupported_resource",
            f"unsupported resourceType {resource_type!r}: send Observation or "
            "MedicationAdministration",
            "resourceType",
        )
    except EntryInvalid as exc:
        raise EntryInvalid(exc.code, f"entry {index}: {exc.message}", exc.path) from None


def _validate(model: type[BaseModel], obj: dict[str, Any]) -> None:
    """Validate the structure with fhir.resources; any complaint is invalid_resource."""
    name = model.__name__
    try:
        model.model_validate(obj)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        paths = [_error_path(error["loc"], error["msg"]) for error in errors]
        detail = "; ".join(
            f"{path or '(resource)'}: {error['msg']}"
            for path, error in zip(paths[:_MAX_ERRORS], errors, strict=False)
        )
        if len(errors) > _MAX_ERRORS:
            detail += f"; and {len(errors) - _MAX_ERRORS} more"
        raise EntryInvalid(
            "invalid_resource", f"not a valid FHIR R4 {name}: {detail}", paths[0]
        ) from None
    except (TypeError, ValueError, ArithmeticError, RecursionError) as exc:
        # Input that makes a validator itself fail is still only a bad document.
        raise EntryInvalid(
            "invalid_resource", f"not a valid FHIR R4 {name}: {type(exc).__name__}", ""
        ) from None


def _error_path(loc: tuple[int | str, ...], message: str) -> str:
    """A pydantic error location as a slash path from the resource root.

    fhir.resources reports choice-type (`value[x]`) errors at the enclosing element with
    the candidates in the message; they are named `<prefix>[x]` here.
    """
    parts = [
        "resourceType" if part == "resource_type" else str(part) for part in loc if part != "root"
    ]
    choice = _CHOICE_LIST.search(message)
    if choice is not None:
        names = re.findall(r"'([^']*)'", choice[1])
        if names:
            prefix = names[0]
            for name in names[1:]:
                while not name.startswith(prefix):
                    prefix = prefix[:-1]
            prefix = re.sub(r"[A-Z][a-z]*$", "", prefix) if prefix in names else prefix
            parts.append(f"{prefix}[x]")
    return "/".join(parts)


# --------------------------------------------------------------------------- Observation


def _observation(obj: dict[str, Any]) -> ParsedReading:
    status = obj.get("status")
    if not isinstance(status, str) or status not in OBSERVATION_STATUSES:
        raise EntryInvalid(
            "invalid_status",
            f"Observation status {status!r} is not a result: send final, amended, "
            "corrected or preliminary",
            "status",
        )
    kind, code = _observation_kind(obj.get("code"))
    effective = _effective(obj)
    subject = _reference(obj.get("subject"))
    context = _context(obj)
    unit = CANONICAL_UNIT[kind]
    if kind is ReadingKind.BLOOD_PRESSURE:
        systolic, diastolic = _blood_pressure(obj.get("component"))
        return ParsedReading(
            kind=kind,
            code=code,
            effective=effective,
            systolic=systolic,
            diastolic=diastolic,
            unit=unit,
            subject=subject,
            context=context,
        )
    value = _measure(obj.get("valueQuantity"), "valueQuantity", kind)
    if kind is ReadingKind.STEP_COUNT and value < 0:
        raise EntryInvalid(
            "invalid_value", "a step count cannot be negative", "valueQuantity/value"
        )
    return ParsedReading(
        kind=kind,
        code=code,
        effective=effective,
        value=value,
        unit=unit,
        subject=subject,
        context=context,
    )


def _loinc_codes(concept: object) -> list[str]:
    """The LOINC codes among a CodeableConcept's codings, in order."""
    codes = []
    for item in _list(_dict(concept).get("coding")):
        coding = _dict(item)
        code = coding.get("code")
        if coding.get("system") == LOINC and isinstance(code, str):
            codes.append(code)
    return codes


def _observation_kind(concept: object) -> tuple[ReadingKind, str]:
    matches = [(OBSERVATION_CODES[c], c) for c in _loinc_codes(concept) if c in OBSERVATION_CODES]
    if not matches:
        raise EntryInvalid(
            "unsupported_code",
            "no supported LOINC code (http://loinc.org): blood pressure 85354-9 / 55284-4, "
            "heart rate 8867-4, steps 41950-7 / 55423-8",
            "code",
        )
    if len({kind for kind, _ in matches}) > 1:
        raise EntryInvalid(
            "ambiguous_code",
            f"the codes name different kinds of reading: {[c for _, c in matches]}",
            "code",
        )
    return matches[0]


def _blood_pressure(components: object) -> tuple[float, float]:
    found: dict[str, int] = {}
    for i, component in enumerate(_list(components)):
        codes = {
            c for c in _loinc_codes(_dict(component).get("code")) if c in (SYSTOLIC, DIASTOLIC)
        }
        if len(codes) > 1:
            raise EntryInvalid(
                "ambiguous_code",
                "a component coded both systolic and diastolic",
                f"component/{i}/code",
            )
        for code in codes:
            if code in found:
                raise EntryInvalid(
                    "ambiguous_code", f"a second component coded {code}", f"component/{i}/code"
                )
            found[code] = i
    values = []
    for code, name in ((SYSTOLIC, "systolic"), (DIASTOLIC, "diastolic")):
        if code not in found:
            raise EntryInvalid("missing_value", f"no {name} component (LOINC {code})", "component")
        i = found[code]
        quantity = _dict(_list(components)[i]).get("valueQuantity")
        values.append(
            _measure(quantity, f"component/{i}/valueQuantity", ReadingKind.BLOOD_PRESSURE)
        )
    return values[0], values[1]


def _measure(quantity: object, path: str, kind: ReadingKind) -> float:
    """A Quantity's value in the kind's canonical unit."""
    if not isinstance(quantity, dict):
        raise EntryInvalid("missing_value", "no valueQuantity", path)
    if quantity.get("comparator") is not None:
        raise EntryInvalid(
            "invalid_value",
            "a bounded value (comparator) is not a measurement",
            f"{path}/comparator",
        )
    value = quantity.get("value")
    if value is None:
        raise EntryInvalid("missing_value", "the quantity has no value", f"{path}/value")
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not abs(value) < _MAX_MAGNITUDE  # also NaN and the infinities
    ):
        raise EntryInvalid(
            "invalid_value", f"not a finite JSON number below 1e9: {value!r}", f"{path}/value"
        )
    factor = _unit_factor(quantity, kind, path)
    if factor == 1.0:
        return float(value)
    return round(value * factor, 1)


def _unit_factor(quantity: dict[str, Any], kind: ReadingKind, path: str) -> float:
    accepted = UNITS[kind]
    code, system, text = quantity.get("code"), quantity.get("system"), quantity.get("unit")
    if isinstance(code, str) and system in (None, UCUM):
        unit, which = code, "code"
    elif isinstance(text, str):
        unit, which = text, "unit"
    else:
        raise EntryInvalid("invalid_unit", "the quantity has no unit", path)
    if unit not in accepted:
        raise EntryInvalid(
            "invalid_unit",
            f"unit {which} {unit!r} is not one of {sorted(accepted)} for {kind}",
            path,
        )
    return accepted[unit]


# ------------------------------------------------------------------ one-pass route

# What the one-pass route reads; any other element sends the document the long way.
_FUSED_KEYS = frozenset(
    {
        "resourceType",
        "id",
        "meta",
        "identifier",
        "status",
        "category",
        "code",
        "subject",
        "effectiveDateTime",
        "issued",
        "device",
        "valueQuantity",
        "component",
    }
)
_CHECKED_AS_IS = ("id", "meta", "identifier", "subject", "issued", "device")
_COMPONENT_KEYS = frozenset({"code", "valueQuantity"})
_BP_CODES = (SYSTOLIC, DIASTOLIC)
_KINDS = EqualityMemo()  # valid code concept -> (kind, code), or None when unsupported
_COMPONENT_CODES = EqualityMemo()  # valid component concept -> its systolic/diastolic codes
_NOT_SEEN = object()


def _fused_observation(obj: dict[str, Any]) -> ParsedReading | None:
    """Structure and meaning of a plain device Observation in one pass, or None.

    None decides nothing: the document takes the long way (fast_accepts or fhir.resources,
    then `_observation`), which also words every refusal. The differential tests hold that
    this route returns exactly what the long way does whenever it returns anything.
    """
    if not obj.keys() <= _FUSED_KEYS or obj.get("resourceType") != "Observation":
        return None
    status = obj.get("status")
    if type(status) is not str or status not in OBSERVATION_STATUSES:
        return None
    for key in _CHECKED_AS_IS:
        if key in obj and not field_ok(key, obj[key]):
            return None
    category = obj.get("category")
    if category is not None:
        if type(category) is not list or not 0 < len(category) <= 64:
            return None
        for concept in category:
            if not concept_ok(concept):
                return None
    found = _code_kind(obj.get("code"))
    if found is None:
        return None
    kind, code = found
    effective = _fused_effective(obj.get("effectiveDateTime"))
    if effective is None:
        return None
    context = _context(obj) if "device" in obj else {}
    subject = _reference(obj.get("subject"))
    unit = CANONICAL_UNIT[kind]
    if kind is ReadingKind.BLOOD_PRESSURE:
        if "valueQuantity" in obj:
            return None
        pressures = _fused_pressures(obj.get("component"))
        if pressures is None:
            return None
        return ParsedReading(
            kind=kind,
            code=code,
            effective=effective,
            systolic=pressures[0],
            diastolic=pressures[1],
            unit=unit,
            subject=subject,
            context=context,
        )
    if "component" in obj:
        return None
    value = _fused_measure(obj.get("valueQuantity"), kind)
    if value is None or (kind is ReadingKind.STEP_COUNT and value < 0):
        return None
    return ParsedReading(
        kind=kind,
        code=code,
        effective=effective,
        value=value,
        unit=unit,
        subject=subject,
        context=context,
    )


def _code_kind(concept: object) -> tuple[ReadingKind, str] | None:
    found = _KINDS.get(concept, _NOT_SEEN)
    if found is _NOT_SEEN:
        if not concept_ok(concept):
            return None
        try:
            found = _observation_kind(concept)
        except EntryInvalid:
            found = None
        _KINDS.put(concept, found)
    return found  # type: ignore[return-value]


def _fused_effective(raw: object) -> EffectiveTime | None:
    if not field_ok("effectiveDateTime", raw):
        return None
    assert isinstance(raw, str)
    if len(raw) < 20:  # a partial date: parse_fhir_datetime keeps its precision
        return parse_fhir_datetime(raw)
    # A full date-time the fast path's narrowed regex took: no leap second, an offset, a
    # year Python can represent in UTC; fromisoformat reads it as parse_fhir_datetime would.
    return EffectiveTime(datetime.fromisoformat(raw).astimezone(UTC), None, Precision.SECOND, raw)


def _fused_pressures(components: object) -> tuple[float, float] | None:
    if type(components) is not list or len(components) != 2:
        return None
    values: dict[str, float] = {}
    for component in components:
        if type(component) is not dict or not component.keys() <= _COMPONENT_KEYS:
            return None
        concept = component.get("code")
        codes = _COMPONENT_CODES.get(concept, _NOT_SEEN)
        if codes is _NOT_SEEN:
            if not concept_ok(concept):
                return None
            codes = tuple(c for c in _loinc_codes(concept) if c in _BP_CODES)
            _COMPONENT_CODES.put(concept, codes)
        assert isinstance(codes, tuple)
        if len(codes) != 1 or codes[0] in values:
            return None
        value = _fused_measure(component.get("valueQuantity"), ReadingKind.BLOOD_PRESSURE)
        if value is None:
            return None
        values[codes[0]] = value
    return values[SYSTOLIC], values[DIASTOLIC]


def _fused_measure(quantity: object, kind: ReadingKind) -> float | None:
    if type(quantity) is not dict or not quantity_unit_ok(quantity):
        return None
    value = quantity.get("value")
    if (type(value) is not int and type(value) is not float) or not -_MAX_MAGNITUDE < value < (
        _MAX_MAGNITUDE
    ):
        return None
    code, system, text = quantity.get("code"), quantity.get("system"), quantity.get("unit")
    if isinstance(code, str) and system in (None, UCUM):
        unit = code
    elif isinstance(text, str):
        unit = text
    else:
        return None
    factor = UNITS[kind].get(unit)
    if factor is None:
        return None
    return float(value) if factor == 1.0 else round(value * factor, 1)


# ------------------------------------------------------------------ MedicationAdministration

_TAKEN = {"completed": True, "not-done": False}


def _medication_administration(obj: dict[str, Any]) -> ParsedMedicationEvent:
    status = obj.get("status")
    if not isinstance(status, str) or status not in _TAKEN:
        raise EntryInvalid(
            "invalid_status",
            f"MedicationAdministration status {status!r}: send completed or not-done",
            "status",
        )
    taken = _TAKEN[status]
    medication = _medication(obj)
    effective = _effective(obj)
    reason = None if taken else _status_reason(obj.get("statusReason"))
    return ParsedMedicationEvent(
        medication=medication,
        taken=taken,
        effective=effective,
        reason=reason,
        subject=_reference(obj.get("subject")),
    )


def _medication(obj: dict[str, Any]) -> str:
    if obj.get("medicationCodeableConcept") is not None:
        concept = _dict(obj["medicationCodeableConcept"])
        for coding in _list(concept.get("coding")):
            text = _coding_text(coding)
            if text is not None:
                return text
        text = _text(concept.get("text"))
        if text is not None:
            return text
        raise EntryInvalid(
            "missing_value", "the medication has no code or text", "medicationCodeableConcept"
        )
    if obj.get("medicationReference") is not None:
        reference = _reference(obj["medicationReference"])
        if reference is not None:
            return reference
        raise EntryInvalid(
            "missing_value", "the medication reference has no reference", "medicationReference"
        )
    raise EntryInvalid("missing_value", "no medication", "medication[x]")


def _status_reason(reasons: object) -> str | None:
    for item in _list(reasons):
        concept = _dict(item)
        text = _text(concept.get("text"))
        if text is not None:
            return text
        for coding in _list(concept.get("coding")):
            text = _coding_text(coding)
            if text is not None:
                return text
    return None


# --------------------------------------------------------------------------- shared parts

_EFFECTIVE_KEYS = ("effectiveDateTime", "effectivePeriod", "effectiveInstant", "effectiveTiming")


def _effective(obj: dict[str, Any]) -> EffectiveTime:
    present = [key for key in _EFFECTIVE_KEYS if obj.get(key) is not None]
    if not present:
        raise EntryInvalid("missing_effective", "no effective time", "effective[x]")
    if len(present) > 1:  # fhir.resources refuses this already
        raise EntryInvalid("invalid_resource", "more than one effective[x]", "effective[x]")
    key = present[0]
    raw = obj[key]
    if key == "effectiveDateTime":
        return _when(raw, key)
    if key == "effectiveInstant":
        when = _when(raw, key)
        if when.precision is not Precision.SECOND:
            raise EntryInvalid("invalid_datetime", "an instant needs a full date-time", key)
        return when
    if key == "effectivePeriod":
        period = _dict(raw)
        if period.get("start") is None:
            raise EntryInvalid("missing_effective", "the period has no start", f"{key}/start")
        if period.get("end") is None:
            raise EntryInvalid("missing_effective", "the period has no end", f"{key}/end")
        start = _when(period["start"], f"{key}/start")
        end = _when(period["end"], f"{key}/end")
        last = end.end if end.end is not None else end.start  # a partial end is inclusive
        if last < start.start:
            raise EntryInvalid("invalid_datetime", "the period ends before it starts", key)
        return EffectiveTime(start.start, last, Precision.INTERVAL, f"{start.raw}/{end.raw}")
    raise EntryInvalid(
        "missing_effective",
        "effectiveTiming is not supported: send effectiveDateTime, effectiveInstant or "
        "effectivePeriod",
        key,
    )


def _when(raw: object, path: str) -> EffectiveTime:
    if not isinstance(raw, str):
        raise EntryInvalid("invalid_datetime", f"not a FHIR dateTime string: {raw!r}", path)
    try:
        return parse_fhir_datetime(raw, path)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-14:00 is past year 9999 in UTC
        raise EntryInvalid("invalid_datetime", f"out of range: {raw!r}", path) from None


def _context(obj: dict[str, Any]) -> dict[str, Any]:
    context: dict[str, Any] = {}
    for key, name in (("bodySite", "body_site"), ("method", "method")):
        text = _concept_text(obj.get(key))
        if text is not None:
            context[name] = text
    device = _dict(obj.get("device"))
    display, reference = _text(device.get("display")), _text(device.get("reference"))
    if display is not None:
        context["device"] = display
    if reference is not None:
        context["device_reference"] = reference
    notes = [_text(_dict(note).get("text")) for note in _list(obj.get("note"))]
    if any(note is not None for note in notes):
        context["notes"] = [note for note in notes if note is not None]
    return context


def _concept_text(value: object) -> str | None:
    """A CodeableConcept as one string: its text, else a coding's display, else its code."""
    concept = _dict(value)
    text = _text(concept.get("text"))
    if text is not None:
        return text
    codings = [_dict(c) for c in _list(concept.get("coding"))]
    for coding in codings:
        display = _text(coding.get("display"))
        if display is not None:
            return display
    for coding in codings:
        text = _coding_text(coding)
        if text is not None:
            return text
    return None


def _coding_text(value: object) -> str | None:
    """A Coding as `system|code` (or its bare code without a system)."""
    coding = _dict(value)
    code = _text(coding.get("code"))
    if code is None:
        return None
    system = _text(coding.get("system"))
    return code if system is None else f"{system}|{code}"


def _reference(reference: object) -> str | None:
    """A Reference's `reference` exactly as sent (None when there is none)."""
    value = _dict(reference).get("reference")
    return value if isinstance(value, str) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []
