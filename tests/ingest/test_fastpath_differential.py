"""The accept-only fast path never changes an outcome.

For every document: `fast_accepts(d)` ⇒ `Observation.model_validate(d)` succeeds, so does
a document the one-pass route (`_fused_observation`) parses, and
`parse_resource(d, fast=True)` gives exactly what `parse_resource(d, fast=False)` gives
(the same reading, or the same error code, path and message). Checked on the HL7
conformance example and every mutation of it we build, and on generated device
observations with generated damage. If fhir.resources ever refuses a document the fast
path took, make the fast path stricter; never loosen the check here.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.observation import Observation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from device_ingest.fastpath import fast_accepts
from device_ingest.fhir import _fused_observation, parse_resource
from device_ingest.formats import EntryInvalid

CONFORMANCE = Path(__file__).resolve().parents[2].parent / "shared" / "conformance"
HL7_BP = CONFORMANCE / "hl7-fhir" / "observation-example-bloodpressure.json"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"

SETTINGS = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

Path_ = tuple[str | int, ...]


def outcome(doc: object, *, fast: bool) -> tuple[object, ...]:
    """What parse_resource makes of a document: the parsed value, or the error."""
    try:
        return ("parsed", parse_resource(doc, index=0, fast=fast))
    except EntryInvalid as exc:
        return ("refused", exc.code, exc.path, exc.message)


def fhir_resources_accepts(doc: object) -> bool:
    """Does fhir.resources take the document as an R4B Observation?"""
    try:
        Observation.model_validate(doc)
    except ValidationError:
        return False
    return True


def check_same(doc: object) -> bool:
    """The differential property for one document; returns fast_accepts(doc)."""
    before = copy.deepcopy(doc)
    accepted = fast_accepts(doc)
    if accepted:
        assert fhir_resources_accepts(doc), f"fast path accepted what R4B refuses: {doc!r}"
    if isinstance(doc, dict) and _fused_observation(doc) is not None:
        assert fhir_resources_accepts(doc), f"one-pass route took what R4B refuses: {doc!r}"
    assert outcome(doc, fast=True) == outcome(doc, fast=False), doc
    assert doc == before or _has_nan(doc), "parsing changed its input"
    return accepted


def _has_nan(value: object) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    return False


# ----------------------------------------------------------------- document surgery


def paths(value: object, prefix: Path_ = ()) -> Iterator[Path_]:
    """Every location in a JSON document, parents before children (the root excluded)."""
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, item in items:
        yield (*prefix, key)
        yield from paths(item, (*prefix, key))


def get(doc: Any, path: Path_) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def replaced(doc: Any, path: Path_, value: object) -> Any:
    out = copy.deepcopy(doc)
    get(out, path[:-1])[path[-1]] = value
    return out


def dropped(doc: Any, path: Path_) -> Any:
    out = copy.deepcopy(doc)
    del get(out, path[:-1])[path[-1]]
    return out


def with_key(doc: Any, path: Path_, key: str, value: object) -> Any:
    out = copy.deepcopy(doc)
    get(out, path)[key] = value
    return out


# The Observation elements of the fast-path subset.
FAST_KEYS = {
    "resourceType", "id", "meta", "identifier", "status", "category", "code", "subject",
    "effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued", "device",
    "valueQuantity", "component", "bodySite", "method", "note",
}  # fmt: skip

# Values that break some rule somewhere: wrong JSON types, empties, nulls, bad primitives.
BAD_VALUES: list[object] = [
    None, True, False, 0, -1, 1.5, 10**40, 10**400, float("nan"), float("inf"),
    "", " ", "x y", "a  b", "a\tb", " final", "final ", "final\n", "\u00a0", "\x00", "\ud800",
    "Ωμέγα", "2020-13-01", "2020-02-30T10:00:00Z", "2020-02-03T10:00:00", "2016-12-31T23:59:60Z",
    "9999-12-31T23:59:59-14:00", "0000", "107", "1e400", [], [None], [[]], {}, {"x": 1},
    {"value": 1}, {"coding": []}, [{"text": "t"}], {"text": {"text": "t"}},
]  # fmt: skip

# An integer too long to print (Python refuses str() past 4300 digits).
HUGE = 10**5000

# Keys to add: FHIR elements outside the fast subset, choice siblings, plain garbage.
EXTRA_KEYS: list[tuple[str, object]] = [
    ("foo", 1), ("extension", [{"url": "http://x", "valueString": "y"}]), ("id", "a1"),
    ("_status", {"id": "s"}), ("fhir_comments", "c"), ("resourceType", "Observation"),
    ("text", "t"), ("coding", []), ("value", 1), ("display", "d"), ("comparator", "<"),
    ("valueString", "s"), ("effectiveInstant", "2024-01-01T00:00:00Z"),
    ("effectivePeriod", {"start": "2024-01-01"}), ("effectiveDateTime", "2024"),
    ("interpretation", [{"text": "L"}]), ("performer", [{"reference": "Practitioner/p"}]),
    ("dataAbsentReason", {"text": "gone"}), ("", None), ("status", "final"),
]  # fmt: skip


def mutations(doc: dict[str, Any]) -> Iterator[Any]:
    """Every single-step mutation of a document this module knows how to make."""
    for path in list(paths(doc)):
        yield dropped(doc, path)
        for bad in [*BAD_VALUES, HUGE]:
            yield replaced(doc, path, bad)
        leaf = get(doc, path)
        if isinstance(leaf, str):
            yield replaced(doc, path, f" {leaf}")
            yield replaced(doc, path, f"{leaf}\n")
            yield replaced(doc, path, leaf.upper())
        if isinstance(leaf, int | float) and not isinstance(leaf, bool):
            yield replaced(doc, path, str(leaf))
            yield replaced(doc, path, float(leaf))
        if isinstance(leaf, list) and leaf:
            yield replaced(doc, path, leaf[0])  # an item where an array belongs
            yield replaced(doc, path, [*leaf, leaf[0]])
        if isinstance(leaf, dict):
            yield replaced(doc, path, [leaf])  # an array where an object belongs
            for key, value in EXTRA_KEYS:
                yield with_key(doc, path, key, value)
    for key, value in EXTRA_KEYS:
        yield with_key(doc, (), key, value)


def device_shaped(doc: dict[str, Any]) -> dict[str, Any]:
    """The HL7 example cut down to the keys a device feed uses (fast-path shaped)."""
    out = {k: copy.deepcopy(v) for k, v in doc.items() if k in FAST_KEYS}
    out["meta"] = {"profile": doc["meta"]["profile"]}
    out["component"] = [
        {"code": c["code"], "valueQuantity": c["valueQuantity"]} for c in doc["component"]
    ]
    return out


# ----------------------------------------------------------------- (a) conformance data


@pytest.fixture(scope="module")
def hl7() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(HL7_BP.read_text(encoding="utf-8"))
    return doc


def test_fast_path_declines_hl7_example_and_agrees(hl7: dict[str, Any]) -> None:
    # meta.tag, basedOn, performer and interpretation are outside the device subset
    assert not check_same(hl7)
    assert outcome(hl7, fast=True)[0] == "parsed"


def test_fast_path_takes_device_shaped_hl7_example(hl7: dict[str, Any]) -> None:
    doc = device_shaped(hl7)
    assert check_same(doc)
    assert outcome(doc, fast=True) == outcome(hl7, fast=False)


def test_agree_on_every_mutation_of_hl7_example(hl7: dict[str, Any]) -> None:
    cases = list(mutations(hl7))
    assert len(cases) > 3000
    for doc in cases:
        check_same(doc)


def test_agree_on_every_mutation_of_device_shaped_hl7_example(hl7: dict[str, Any]) -> None:
    cases = list(mutations(device_shaped(hl7)))
    took = sum(check_same(doc) for doc in cases)
    # the fast path must be exercised, not vacuously declined
    assert took > 100
    # and it declines nearly everything damaged
    assert took < len(cases) // 3


def test_agree_on_pairs_of_mutations_of_device_shaped_example(hl7: dict[str, Any]) -> None:
    base = device_shaped(hl7)
    drops = [dropped(base, p) for p in paths(base)]
    for doc in drops:
        for path in list(paths(doc))[::3]:
            check_same(dropped(doc, path))


# ----------------------------------------------------------------- (b) generated cases

_words = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Z")),
    min_size=1,
    max_size=12,
)
_uris = st.sampled_from(
    ["http://snomed.info/sct", "urn:ietf:rfc:3986", "https://acme.org/ids", "urn:oid:1.2.3"]
)
_codes = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,10}", fullmatch=True)


@st.composite
def fhir_datetimes(draw: st.DrawFn, *, instant: bool = False) -> str:
    """FHIR dateTime strings, mostly valid, of every precision."""
    year = draw(st.integers(1990, 2035))
    month = draw(st.integers(1, 12))
    day = draw(st.integers(1, 28))
    precision = "second" if instant else draw(st.sampled_from(["year", "month", "day", "second"]))
    if precision == "year":
        return f"{year:04d}"
    if precision == "month":
        return f"{year:04d}-{month:02d}"
    if precision == "day":
        return f"{year:04d}-{month:02d}-{day:02d}"
    hh, mm, ss = draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 59))
    fraction = draw(st.sampled_from(["", ".5", ".250", ".123456", ".123456789"]))
    offset = draw(st.sampled_from(["Z", "+00:00", "-05:00", "+05:30", "+14:00", "-11:45"]))
    return f"{year:04d}-{month:02d}-{day:02d}T{hh:02d}:{mm:02d}:{ss:02d}{fraction}{offset}"


def _coding(system: st.SearchStrategy[str], code: st.SearchStrategy[str]) -> Any:
    return st.fixed_dictionaries({"system": system, "code": code}, optional={"display": _words})


def _concept(coding: st.SearchStrategy[Any]) -> Any:
    return st.fixed_dictionaries(
        {"coding": st.lists(coding, min_size=1, max_size=3)}, optional={"text": _words}
    )


def _quantity(units: list[str]) -> Any:
    value = st.one_of(
        st.integers(0, 400),
        st.floats(0, 400, allow_nan=False, allow_infinity=False),
        st.integers(-10, 10**6),
    )
    return st.fixed_dictionaries(
        {"value": value, "unit": st.sampled_from(units)},
        optional={"system": st.just(UCUM), "code": st.sampled_from(units)},
    )


BP_UNITS = ["mm[Hg]", "mmHg", "kPa"]
HR_UNITS = ["/min", "{beats}/min", "beats/minute"]
STEP_UNITS = ["{steps}", "steps", "1", "/d"]
_other_concept = _concept(_coding(_uris, _codes))
_reference = st.fixed_dictionaries(
    {},
    optional={
        "reference": st.sampled_from(["Patient/x", "Patient/p-1", "urn:uuid:abc", "Device/d"]),
        "display": _words,
    },
).filter(bool)


def _loinc(code: str | list[str]) -> Any:
    codes = [code] if isinstance(code, str) else code
    return _concept(_coding(st.just(LOINC), st.sampled_from(codes)))


# What each kind puts in `code` and where its values go (strategies built once).
_KINDS: list[tuple[Any, Any]] = [
    (
        _loinc(["85354-9", "55284-4"]),
        st.fixed_dictionaries(
            {
                "component": st.tuples(
                    st.fixed_dictionaries(
                        {"code": _loinc("8480-6"), "valueQuantity": _quantity(BP_UNITS)}
                    ),
                    st.fixed_dictionaries(
                        {"code": _loinc("8462-4"), "valueQuantity": _quantity(BP_UNITS)}
                    ),
                ).map(list)
            }
        ),
    ),
    (_loinc("8867-4"), st.fixed_dictionaries({"valueQuantity": _quantity(HR_UNITS)})),
    (
        _loinc(["41950-7", "55423-8"]),
        st.fixed_dictionaries({"valueQuantity": _quantity(STEP_UNITS)}),
    ),
]
_EFFECTIVE = st.one_of(
    st.fixed_dictionaries({"effectiveDateTime": fhir_datetimes()}),
    st.fixed_dictionaries({"effectiveInstant": fhir_datetimes(instant=True)}),
    st.fixed_dictionaries(
        {
            "effectivePeriod": st.fixed_dictionaries(
                {"start": fhir_datetimes(), "end": fhir_datetimes()}
            )
        }
    ),
)
_OPTIONAL = st.fixed_dictionaries(
    {},
    optional={
        "id": st.from_regex(r"[A-Za-z0-9\-.]{1,64}", fullmatch=True),
        "meta": st.fixed_dictionaries(
            {},
            optional={
                "profile": st.lists(_uris, min_size=1, max_size=2),
                "lastUpdated": fhir_datetimes(instant=True),
            },
        ).filter(bool),
        "identifier": st.lists(
            st.fixed_dictionaries({"system": _uris, "value": _words}), min_size=1, max_size=2
        ),
        "category": st.lists(_other_concept, min_size=1, max_size=2),
        "subject": _reference,
        "issued": fhir_datetimes(instant=True),
        "device": _reference,
        "bodySite": _other_concept,
        "method": _other_concept,
        "note": st.lists(st.fixed_dictionaries({"text": _words}), min_size=1, max_size=2),
    },
)
_STATUS = st.sampled_from(["final", "final", "amended", "preliminary"])


@st.composite
def device_observations(draw: st.DrawFn) -> dict[str, Any]:
    """A device BP, heart-rate or step Observation in the fast-path shape."""
    code, values = draw(st.sampled_from(_KINDS))
    doc: dict[str, Any] = {
        "resourceType": "Observation",
        "status": draw(_STATUS),
        "code": draw(code),
    }
    doc.update(draw(values))
    doc.update(draw(_EFFECTIVE))
    doc.update(draw(_OPTIONAL))
    return doc


_garbage = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=8),
        st.sampled_from(BAD_VALUES),
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
_strings = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=6).map(lambda s: f" {s} "),
    st.from_regex(
        r"[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2}(Z|[+-][0-9]{2}:[0-9]{2}))?",
        fullmatch=True,
    ),
    st.sampled_from(["mm[Hg]", "final", "http://loinc.org", "8480-6", "a b", "a  b", "x\n"]),
)


def _damage(draw: st.DrawFn, doc: dict[str, Any]) -> Any:
    """One generated mutation somewhere in the document."""
    where = draw(st.sampled_from([(), *paths(doc)]))
    leaf = get(doc, where) if where else doc
    how = draw(st.sampled_from(["drop", "replace", "garbage", "string", "add", "retype"]))
    if how == "drop" and where:
        return dropped(doc, where)
    if how == "add" and isinstance(leaf, dict):
        key, value = draw(st.sampled_from(EXTRA_KEYS))
        key = draw(st.sampled_from([key, key, "x" + key.capitalize()]))
        return with_key(doc, where, key, draw(st.sampled_from([value, None, [], {}])))
    if not where:
        return doc
    if how == "replace":
        return replaced(doc, where, draw(st.sampled_from(BAD_VALUES)))
    if how == "garbage":
        return replaced(doc, where, draw(_garbage))
    if how == "string":
        return replaced(doc, where, draw(_strings))
    # retype: a string for a number, a number for a string, a list for an object, ...
    if isinstance(leaf, bool):
        return replaced(doc, where, int(leaf))
    if isinstance(leaf, int | float):
        return replaced(doc, where, draw(st.sampled_from([str(leaf), bool(leaf), [leaf]])))
    if isinstance(leaf, str):
        return replaced(doc, where, draw(st.sampled_from([len(leaf), [leaf], {"value": leaf}])))
    return replaced(doc, where, [leaf] if isinstance(leaf, dict) else draw(_garbage))


@st.composite
def damaged_observations(draw: st.DrawFn) -> dict[str, Any]:
    doc = draw(device_observations())
    for _ in range(draw(st.integers(1, 3))):
        doc = _damage(draw, doc)
    return doc


@settings(SETTINGS, max_examples=500)
@given(device_observations())
def test_fast_accepts_every_generated_device_observation(doc: dict[str, Any]) -> None:
    assert check_same(doc)


@settings(SETTINGS, max_examples=1400)
@given(damaged_observations())
def test_agree_on_generated_damaged_observations(doc: dict[str, Any]) -> None:
    check_same(doc)


# A valid value for each part of a dateTime, and edge values (mostly invalid) for each.
_DT_PARTS: dict[str, Any] = {
    "year": st.integers(1000, 2999).map("{:04d}".format),
    "month": st.integers(1, 12).map("-{:02d}".format),
    "day": st.integers(1, 28).map("-{:02d}".format),
    "hour": st.integers(0, 23).map("T{:02d}".format),
    "minute": st.integers(0, 59).map(":{:02d}".format),
    "second": st.integers(0, 59).map(":{:02d}".format),
    "fraction": st.sampled_from(["", ".5", ".250", ".123456", ".123456789"]),
    "offset": st.sampled_from(["Z", "+00:00", "-00:00", "-05:00", "+13:59", "+14:00", "-14:00"]),
}
_DT_EDGES: dict[str, list[str]] = {
    "year": ["0000", "0001", "0999", "3000", "9999", "10000", "999", "\uff12\uff10\uff12\uff10"],
    "month": ["-00", "-13", "-99", "-1", "-02"],
    "day": ["-00", "-29", "-30", "-31", "-32", "-1"],
    "hour": ["T24", "T99", "t10", " T10", "T1"],
    "minute": [":60", ":5", ""],
    "second": [":60", ":61", ":5", ""],
    "fraction": [".", ".1234567890", ".123456789012", ",5", ".5e3"],
    "offset": ["", "z", "+14:01", "+15:00", "-14:30", "+05:60", "+0500", "+05", " Z", "Z\n"],
}


@st.composite
def datetime_edges(draw: st.DrawFn) -> str:
    """A dateTime of some precision with at most one part replaced by an edge value."""
    parts = {name: draw(part) for name, part in _DT_PARTS.items()}
    edge = draw(st.sampled_from([None, *_DT_EDGES, *_DT_EDGES]))
    if edge is not None:
        parts[edge] = draw(st.sampled_from(_DT_EDGES[edge]))
    names = list(_DT_PARTS)
    cut = draw(st.sampled_from([1, 2, 3, *[len(names)] * 3]))
    return "".join(parts[name] for name in names[:cut])


def datetime_docs(raw: str) -> list[dict[str, Any]]:
    """A heart-rate Observation with `raw` in each dateTime / instant element in turn."""
    base: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "8867-4"}]},
        "valueQuantity": {"value": 60, "unit": "/min"},
    }
    period = {"start": "1000-01-01", "end": "2999-12-31"}
    return [
        {**base, "effectiveDateTime": raw},
        {**base, "effectiveInstant": raw},
        {**base, "effectivePeriod": {**period, "start": raw}},
        {**base, "effectivePeriod": {**period, "end": raw}},
        {**base, "effectiveDateTime": "2024-01-01", "issued": raw},
        {**base, "effectiveDateTime": "2024-01-01", "meta": {"lastUpdated": raw}},
    ]


def test_agree_on_every_datetime_edge() -> None:
    valid = {
        "year": "2024", "month": "-02", "day": "-29", "hour": "T10", "minute": ":30",
        "second": ":15", "fraction": ".5", "offset": "+02:00",
    }  # fmt: skip
    names = list(valid)
    cases = set()
    for part, edges in _DT_EDGES.items():
        for edge in edges:
            text = "".join(edge if name == part else valid[name] for name in names)
            cases.update({text, *(text[:cut] for cut in (4, 7, 10))})
    # every day-of-month edge in every month, leap years and not
    for year in ("1900", "2000", "2023", "2024"):
        for month in range(1, 13):
            for day in range(27, 33):
                cases.add(f"{year}-{month:02d}-{day:02d}")
                cases.add(f"{year}-{month:02d}-{day:02d}T00:00:00Z")
    took = 0
    for raw in sorted(cases):
        for doc in datetime_docs(raw):
            took += check_same(doc)
    assert took > 200


@settings(SETTINGS, max_examples=800)
@given(datetime_edges())
def test_agree_on_generated_datetime_edges(raw: str) -> None:
    for doc in datetime_docs(raw):
        check_same(doc)


@settings(SETTINGS, max_examples=1500)
@given(
    st.sampled_from(
        [
            ("status",),
            ("code", "text"),
            ("code", "coding", 0, "code"),
            ("code", "coding", 0, "system"),
            ("code", "coding", 0, "display"),
            ("valueQuantity", "unit"),
            ("valueQuantity", "code"),
            ("valueQuantity", "system"),
            ("subject", "reference"),
            ("id",),
        ]
    ),
    st.text(max_size=10) | st.text(alphabet=st.characters(codec="utf-8"), max_size=4),
)
def test_agree_on_generated_primitive_strings(where: Path_, value: str) -> None:
    doc: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "hr-1",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": "Patient/x"},
        "effectiveDateTime": "2024-01-01T10:00:00Z",
        "valueQuantity": {"value": 60, "unit": "/min", "system": UCUM, "code": "/min"},
    }
    check_same(replaced(doc, where, value))


@settings(SETTINGS, max_examples=800)
@given(
    st.one_of(
        st.integers(),
        st.floats(),
        st.integers(-(10**20), 10**20),
        st.decimals(allow_nan=False).map(float),
        st.sampled_from([True, False, None, 2**53 + 1, 10**15, 10**15 - 1, -(10**15) + 1]),
    )
)
def test_agree_on_generated_numbers(value: object) -> None:
    doc: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "41950-7"}]},
        "effectiveDateTime": "2024-01-01",
        "valueQuantity": {"value": value, "unit": "steps"},
    }
    check_same(doc)
