"""An accept-only pre-check for device Observations (pure, no I/O).

Validating an Observation with the `fhir.resources` models costs 150-300 µs; a device feed
sends thousands a second, nearly all of one plain shape. `fast_accepts` recognises that shape
in a fraction of the time and says True only when the document is certainly valid R4B:

* every key, at every level, is in a small subset of the R4 Observation (`_OBSERVATION`
  below: what blood-pressure cuffs, pulse meters and pedometers send);
* every value passes checks at least as strict as `fhir.resources.R4B`: exact JSON types
  (a bool is not a number, no nulls), finite numbers of moderate size, non-empty strings
  without control characters or surrounding whitespace, codes / URIs / ids / dates that
  match narrowed forms of the FHIR primitive regexes, valid calendar dates, non-empty
  objects and arrays, required elements present, at most one effective[x].

False decides nothing: the document goes to `fhir.resources`, which makes every rejection
and judges every unusual document. The differential tests hold `fast_accepts(d)` ⇒
`Observation.model_validate(d)` succeeds; if it ever fails, make this module stricter.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping

__all__ = ["EqualityMemo", "concept_ok", "fast_accepts", "field_ok", "quantity_unit_ok"]

Check = Callable[[object], bool]

# Characters no fast-path string may hold: C0 controls but tab / LF / CR, DEL and C1
# controls, lone surrogates (pydantic refuses those) and the two non-characters.
_BAD = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff"
# FHIR string is `[ \r\n\t\S]+`: ours also refuses surrounding whitespace and controls.
_STRING = re.compile(rf"[^\s{_BAD}](?:[^{_BAD}]*[^\s{_BAD}])?")
# FHIR code is `[^\s]+(\s[^\s]+)*`: ours is printable ASCII with single spaces.
_CODE = re.compile(r"[!-~]+(?: [!-~]+)*")
# FHIR uri / canonical is `\S*`: ours is non-empty printable ASCII.
_URI = re.compile(r"[!-~]+")
# FHIR id is `[A-Za-z0-9\-\.]{1,64}` (fhir.resources allows 255 characters).
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# FHIR dateTime, narrowed: years 1000-2999 (so no offset can carry a time out of the range
# Python can represent), at most nine fraction digits, no leap second.
_OFFSET = r"(?:Z|[+-](?:0[0-9]|1[0-3]):[0-5][0-9]|[+-]14:00)"
_TIME = rf"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{{1,9}})?{_OFFSET}"
_YMD = r"([12][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
_DATETIME = re.compile(
    rf"([12][0-9]{{3}})(?:-(0[1-9]|1[0-2])(?:-(0[1-9]|[12][0-9]|3[01])(?:{_TIME})?)?)?"
)
_INSTANT = re.compile(rf"{_YMD}{_TIME}")

_MAX_STRING = 4096
_MAX_CODE = 256
_MAX_ITEMS = 64
# Decimal magnitude bound: fhir.resources takes huge integers; a device never sends them.
_MAX_NUMBER = 10**15
_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _pattern(regex: re.Pattern[str], max_len: int) -> Check:
    fullmatch = regex.fullmatch

    def check(value: object) -> bool:
        return type(value) is str and len(value) <= max_len and fullmatch(value) is not None

    return check


_string = _pattern(_STRING, _MAX_STRING)
_code = _pattern(_CODE, _MAX_CODE)
_uri = _pattern(_URI, _MAX_STRING)
_id = _pattern(_ID, 64)


def _valid_day(year: str, month: str, day: str | None) -> bool:
    if day is None:
        return True
    y, m = int(year), int(month)
    last = 29 if m == 2 and y % 4 == 0 and (y % 100 != 0 or y % 400 == 0) else _DAYS[m - 1]
    return int(day) <= last


def _datetime(value: object) -> bool:
    if type(value) is not str:
        return False
    match = _DATETIME.fullmatch(value)
    return match is not None and _valid_day(match[1], match[2], match[3])


def _instant(value: object) -> bool:
    if type(value) is not str:
        return False
    match = _INSTANT.fullmatch(value)
    return match is not None and _valid_day(match[1], match[2], match[3])


def _decimal(value: object) -> bool:
    # Exact types: bool (an int subclass) is not a number. NaN fails both comparisons,
    # the infinities one of them.
    if type(value) is int or type(value) is float:
        return -_MAX_NUMBER < value < _MAX_NUMBER
    return False


def _object(fields: Mapping[str, Check], required: tuple[str, ...] = ()) -> Check:
    """A non-empty JSON object whose keys are all in `fields` and whose values pass them."""

    def check(value: object) -> bool:
        if type(value) is not dict or not value:
            return False
        for key, item in value.items():
            field = fields.get(key)
            if field is None or not field(item):
                return False
        for key in required:  # noqa: SIM110 - a plain loop beats all() here
            if key not in value:
                return False
        return True

    return check


def _array(item: Check) -> Check:
    """A non-empty JSON array (R4 has no empty arrays) of at most `_MAX_ITEMS` valid items."""

    def check(value: object) -> bool:
        if type(value) is not list or not 0 < len(value) <= _MAX_ITEMS:
            return False
        for element in value:  # noqa: SIM110 - a plain loop beats all() here
            if not item(element):
                return False
        return True

    return check


class EqualityMemo:
    """Results of a pure function of JSON values, found again by equality (==).

    A device sends the same few codes in every reading; comparing a value with the ones
    seen before (in C, by `tuple.index`) costs far less than walking it again. Only for
    values whose leaves are all strings: there `==` implies the same JSON types (1 == True
    == 1.0 would otherwise let an invalid value match a valid one).
    """

    def __init__(self, size: int = 64) -> None:
        self._size = size
        # One tuple pair replaced at once, so concurrent threads never see them misaligned.
        self._state: tuple[tuple[object, ...], tuple[object, ...]] = ((), ())

    def get(self, value: object, default: object = None) -> object:
        """The result stored for a value equal to `value`, else `default`."""
        keys, results = self._state
        try:
            return results[keys.index(value)]
        except ValueError:
            return default

    def put(self, value: object, result: object) -> None:
        """Remember `result` for `value` (a copy of it); forget everything when full."""
        keys, results = self._state
        if len(keys) >= self._size:
            keys, results = (), ()
        self._state = ((*keys, copy.deepcopy(value)), (*results, result))


_coding = _object({"system": _uri, "code": _code, "display": _string})
_concept_walk = _object({"coding": _array(_coding), "text": _string})
_CONCEPTS = EqualityMemo()
_VALID = object()


def _concept(value: object) -> bool:
    # A valid concept holds strings only (see EqualityMemo), so equality is safe here.
    if _CONCEPTS.get(value) is _VALID:
        return True
    if not _concept_walk(value):
        return False
    _CONCEPTS.put(value, _VALID)
    return True


def concept_ok(value: object) -> bool:
    """The fast path's CodeableConcept check (memoized): True only for a valid one."""
    return _concept(value)


_MISSING = object()
_QUANTITY_KEYS = frozenset({"value", "unit", "system", "code"})
_UNITS_SEEN: set[tuple[object, object, object]] = set()


def quantity_unit_ok(quantity: dict[str, object]) -> bool:
    """A Quantity's keys and its unit, system and code pass the fast path (value unchecked)."""
    if not quantity.keys() <= _QUANTITY_KEYS:
        return False
    key = (
        quantity.get("unit", _MISSING),
        quantity.get("system", _MISSING),
        quantity.get("code", _MISSING),
    )
    try:
        if key in _UNITS_SEEN:  # only all-string keys are ever stored: equality is safe
            return True
    except TypeError:  # an unhashable value (a list or an object) is no unit
        return False
    unit, system, code = key
    if not (
        (unit is _MISSING or _string(unit))
        and (system is _MISSING or _uri(system))
        and (code is _MISSING or _code(code))
    ):
        return False
    if len(_UNITS_SEEN) < 256:
        _UNITS_SEEN.add(key)
    return True


_reference = _object({"reference": _string, "display": _string})
_quantity = _object({"value": _decimal, "unit": _string, "system": _uri, "code": _code})
_period = _object({"start": _datetime, "end": _datetime})

_OBSERVATION: dict[str, Check] = {
    "resourceType": lambda value: type(value) is str and value == "Observation",
    "id": _id,
    "meta": _object({"profile": _array(_uri), "lastUpdated": _instant}),
    "identifier": _array(_object({"system": _uri, "value": _string})),
    "status": _code,
    "category": _array(_concept),
    "code": _concept,
    "subject": _reference,
    "effectiveDateTime": _datetime,
    "effectivePeriod": _period,
    "effectiveInstant": _instant,
    "issued": _instant,
    "device": _reference,
    "valueQuantity": _quantity,
    "component": _array(_object({"code": _concept, "valueQuantity": _quantity}, ("code",))),
    "bodySite": _concept,
    "method": _concept,
    "note": _array(_object({"text": _string}, ("text",))),
}
_observation = _object(_OBSERVATION, ("resourceType", "status", "code"))
_EFFECTIVE = ("effectiveDateTime", "effectivePeriod", "effectiveInstant")


def field_ok(key: str, value: object) -> bool:
    """The fast path's check of one Observation element (False for an element it lacks)."""
    check = _OBSERVATION.get(key)
    return check is not None and check(value)


def fast_accepts(obj: object) -> bool:
    """True only for a device-shaped Observation that `fhir.resources.R4B` certainly accepts.

    False means "not sure", never "invalid": let `Observation.model_validate` decide.
    """
    if not _observation(obj) or not isinstance(obj, dict):
        return False
    # effective[x] is a choice: at most one of its forms
    return sum(1 for key in _EFFECTIVE if key in obj) <= 1
