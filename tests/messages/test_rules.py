"""The pure rules of messaging: text cleaning and limits, sides, the list cursor, and the
thread's transition table. No database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.auth.principal import AuthMethod, Principal, PrincipalKind
from loops.messages.models import THREAD_TRANSITIONS, SenderSide, ThreadStatus
from loops.messages.service import (
    BODY_MAX,
    SUBJECT_MAX,
    Cursor,
    MessageInvalid,
    clean_body,
    clean_subject,
    decode_cursor,
    encode_cursor,
    other_side,
    side_of,
    strip_controls,
)


@pytest.mark.parametrize(
    ("raw", "single_line", "expected"),
    [
        ("plain", False, "plain"),
        ("a\x00b\x07c\x1bd\x7fe\x85f\x9fg", False, "abcdefg"),
        ("line1\r\nline2\rline3\n", False, "line1\nline2\nline3\n"),
        ("tab\there", False, "tab\there"),
        ("line1\nline2\tx", True, "line1 line2 x"),
        ("ok\ud800\udfff", False, "ok"),
        ("<script>alert(1)</script> & 'q'", False, "<script>alert(1)</script> & 'q'"),
        ("emoji 👍🏽 zwj 👩‍💻 and ünïcödé", False, "emoji 👍🏽 zwj 👩‍💻 and ünïcödé"),
    ],
)
def test_strip_controls_when_given_text_keeps_all_but_controls(
    raw: str, single_line: bool, expected: str
) -> None:
    assert strip_controls(raw, single_line=single_line) == expected


def test_clean_subject_when_padded_strips_ends_only() -> None:
    assert clean_subject("  Dose  question \n") == "Dose  question"


@pytest.mark.parametrize("raw", ["", "   ", "\x00", "\n\t\r", "\u0085\u009f"])
def test_clean_text_when_empty_after_strip_is_refused(raw: str) -> None:
    with pytest.raises(MessageInvalid) as subject_err:
        clean_subject(raw)
    assert (subject_err.value.field, subject_err.value.code) == ("subject", "empty")
    with pytest.raises(MessageInvalid) as body_err:
        clean_body(raw)
    assert (body_err.value.field, body_err.value.code) == ("body", "empty")


def test_clean_text_when_at_limit_is_kept_and_one_over_is_refused() -> None:
    assert clean_subject("s" * SUBJECT_MAX) == "s" * SUBJECT_MAX
    assert clean_body("b" * BODY_MAX) == "b" * BODY_MAX
    with pytest.raises(MessageInvalid, match="at most 200"):
        clean_subject("s" * (SUBJECT_MAX + 1))
    with pytest.raises(MessageInvalid, match="at most 5000"):
        clean_body("b" * (BODY_MAX + 1))


def test_clean_body_when_controls_padded_counts_length_after_cleaning() -> None:
    assert clean_body("\x00" * 10 + "b" * BODY_MAX) == "b" * BODY_MAX


def _principal(role: str) -> Principal:
    return Principal(PrincipalKind.USER, "7", role, AuthMethod.BEARER)


def test_side_of_when_patient_or_clinician_names_their_side() -> None:
    assert side_of(_principal("patient")) is SenderSide.PATIENT
    assert side_of(_principal("clinician")) is SenderSide.CARE_TEAM
    assert other_side(SenderSide.PATIENT) is SenderSide.CARE_TEAM
    assert other_side(SenderSide.CARE_TEAM) is SenderSide.PATIENT


def test_cursor_when_encoded_decodes_to_same_position() -> None:
    at = datetime(2026, 12, 6, 10, 30, 5, 123456, tzinfo=UTC)
    token = encode_cursor(Cursor(at, "0b8f3d1e-8a1c-4c43-9a55-2b8d8a8c1f00"))
    assert "=" not in token
    assert decode_cursor(token) == Cursor(at, "0b8f3d1e-8a1c-4c43-9a55-2b8d8a8c1f00")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "%%%",
        "bm90LWEtZGF0ZXxhYmM",  # "not-a-date|abc"
        "MjAyNi0xMi0wNlQxMDozMDowNXw",  # "2026-12-06T10:30:05|" (naive, no id)
        "MjAyNi0xMi0wNlQxMDozMDowNSswMDowMHw",  # aware but no id
        "__8",  # not UTF-8
    ],
)
def test_decode_cursor_when_not_ours_raises(token: str) -> None:
    with pytest.raises(ValueError, match="not a cursor"):
        decode_cursor(token)


def test_thread_transitions_when_closed_reopen_and_when_open_close_only() -> None:
    assert THREAD_TRANSITIONS[ThreadStatus.OPEN] == {ThreadStatus.CLOSED}
    assert THREAD_TRANSITIONS[ThreadStatus.CLOSED] == {ThreadStatus.OPEN}
