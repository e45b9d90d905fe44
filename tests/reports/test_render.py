"""Rendering any Report: HTML escaping and self-containment, PDF header, footer and page
orientation, CSV layout and formula defusing, download names. No database."""

from __future__ import annotations

import csv
import re
from datetime import UTC, datetime
from io import BytesIO, StringIO

import pytest
from pypdf import PdfReader

from reports import render
from reports.models import Filters, Period, Report, ReportFormat, ReportKind, Section, Table
from tests.reports.conftest import csv_rows, pdf_pages, squeeze

PERIOD = Period(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
GENERATED = datetime(2026, 12, 6, 19, 29, 53, tzinfo=UTC)
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def _report(
    *sections: Section,
    filters: Filters | None = None,
    summary: tuple[tuple[str, str], ...] = (("Rows", "3"),),
    title: str = "Audit trail",
) -> Report:
    return Report(
        kind=ReportKind.AUDIT_TRAIL,
        title=title,
        period=PERIOD,
        generated_at=GENERATED,
        generated_by="auditor",
        filters=filters or Filters(),
        summary=summary,
        sections=sections,
    )


def _table(columns: int, rows: int) -> Table:
    heads = tuple(f"Column {c}" for c in range(columns))
    return Table(heads, tuple(tuple(f"r{r}c{c}" for c in range(columns)) for r in range(rows)))


def test_to_csv_prefixes_cells_that_could_start_a_formula() -> None:
    cells = ("=1+2", "+SUM(A1)", "-0.30", "@cmd", "\tx", "\rx", "plain", "a=b")
    report = _report(Section("Rows", table=Table(tuple(f"c{i}" for i in range(8)), (cells,))))

    (row,) = list(csv.reader(StringIO(render.to_csv(report), newline="")))[1:]

    assert row == ["'=1+2", "'+SUM(A1)", "'-0.30", "'@cmd", "'\tx", "'\rx", "plain", "a=b"]


def test_to_csv_with_one_primary_table_has_no_section_column() -> None:
    report = _report(
        Section("Rows", table=_table(2, 2)),
        Section("Background", table=_table(3, 1), primary=False),
    )

    text = render.to_csv(report)

    assert text.splitlines()[0] == "Column 0,Column 1"
    assert csv_rows(text) == [
        {"Column 0": "r0c0", "Column 1": "r0c1"},
        {"Column 0": "r1c0", "Column 1": "r1c1"},
    ]
    assert text.endswith("\r\n")


def test_to_csv_with_several_primary_tables_adds_a_section_column() -> None:
    report = _report(
        Section("Reads", table=Table(("Seq", "Outcome"), (("1", "success"),))),
        Section("Summary by actor", table=_table(2, 1), primary=False),
        Section("Denials", table=Table(("Seq", "Code"), (("2", "forbidden"),))),
    )

    rows = csv_rows(render.to_csv(report))

    assert rows == [
        {"section": "Reads", "Seq": "1", "Outcome": "success", "Code": ""},
        {"section": "Denials", "Seq": "2", "Outcome": "", "Code": "forbidden"},
    ]


def test_to_csv_without_primary_tables_lists_summary_and_facts() -> None:
    report = _report(
        Section("Privacy", facts=(("epsilon", "1.5"), ("delta", "1e-5"))),
        Section("Notes only", facts=(("hidden", "x"),), primary=False),
        summary=(("Versions", "2"),),
    )

    rows = csv_rows(render.to_csv(report))

    assert rows == [
        {"section": "Summary", "item": "Versions", "value": "2"},
        {"section": "Privacy", "item": "epsilon", "value": "1.5"},
        {"section": "Privacy", "item": "delta", "value": "1e-5"},
    ]


def test_to_csv_keeps_unicode_and_quotes_separators() -> None:
    report = _report(Section("Rows", table=Table(("a", "b"), (("Zoë, → 20 mg", 'say "hi"'),))))

    body, media_type, _ = render.render(report, ReportFormat.CSV)

    assert media_type == "text/csv; charset=utf-8"
    assert csv_rows(body.decode("utf-8")) == [{"a": "Zoë, → 20 mg", "b": 'say "hi"'}]


def test_to_html_escapes_hostile_text_everywhere() -> None:
    report = _report(
        Section(
            HOSTILE,
            facts=((HOSTILE, HOSTILE),),
            notes=(HOSTILE,),
            table=Table(("Reason",), ((HOSTILE,), ("a_b/c",))),
        ),
        filters=Filters(patient_id=HOSTILE, actor=HOSTILE),
        summary=((HOSTILE, HOSTILE),),
        title=HOSTILE,
    )

    html = render.to_html(report)

    assert "<script" not in html
    assert "<img" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "a_<wbr>b/<wbr>c" in html  # only our own break hints are markup


def test_to_html_is_self_contained() -> None:
    html = render.to_html(_report(Section("Rows", table=_table(3, 2))))

    assert not re.search(r"\b(src|href)\s*=|@import|url\(", html, re.IGNORECASE)
    assert "http://" not in html
    assert "https://" not in html
    assert "@media print" in html


def test_to_html_shows_period_generation_time_and_filters() -> None:
    report = _report(
        Section("Rows", table=Table(("a",), ())),
        filters=Filters(patient_id="P-0001", actor="clina", model_version=3),
    )

    html = render.to_html(report)

    assert PERIOD.label() in html
    assert "2026-12-06 19:29:53 UTC" in html
    assert "patient = P-0001; actor = clina; model version = 3" in html
    assert "No rows in this period with these filters." in html


def test_to_pdf_every_page_has_header_and_footer() -> None:
    report = _report(
        Section("Rows", table=_table(4, 150)),
        filters=Filters(patient_id="P-0001", actor=HOSTILE),
    )

    pages = pdf_pages(render.to_pdf(report))

    assert len(pages) >= 3
    for number, text in enumerate(pages, start=1):
        assert squeeze(f"page {number} of {len(pages)}") in text
        assert squeeze(PERIOD.label()) in text
        assert squeeze("generated 2026-12-06 19:29:53 UTC") in text
        assert squeeze("Audit trail (audit-trail)") in text
        assert squeeze(f"filters in force: patient = P-0001; actor = {HOSTILE}") in text
    body = "".join(pages)
    for r in (0, 75, 149):
        assert squeeze(f"r{r}c0 r{r}c1 r{r}c2 r{r}c3") in body


def test_to_pdf_turns_landscape_for_wide_tables_only() -> None:
    narrow = PdfReader(BytesIO(render.to_pdf(_report(Section("Rows", table=_table(4, 3))))))
    wide = PdfReader(BytesIO(render.to_pdf(_report(Section("Rows", table=_table(10, 3))))))

    n, w = narrow.pages[0].mediabox, wide.pages[0].mediabox
    assert n.width < n.height
    assert w.width > w.height


def test_to_pdf_wraps_long_unbroken_cells_inside_the_page() -> None:
    digest = "ab" * 32
    table = Table(("Id", "Hash", "Key"), ((digest, digest, digest),))

    (text,) = pdf_pages(render.to_pdf(_report(Section("Hashes", table=table))))

    assert text.count(digest) == 3  # every character is on the page, none cut off


@pytest.mark.parametrize(
    ("fmt", "media_type", "magic"),
    [
        (ReportFormat.HTML, "text/html; charset=utf-8", b"<!doctype html>"),
        (ReportFormat.PDF, "application/pdf", b"%PDF-"),
        (ReportFormat.CSV, "text/csv; charset=utf-8", b"Column 0,"),
    ],
)
def test_render_returns_body_media_type_and_filename(
    fmt: ReportFormat, media_type: str, magic: bytes
) -> None:
    body, got_type, name = render.render(_report(Section("Rows", table=_table(2, 1))), fmt)

    assert body.startswith(magic)
    assert got_type == media_type
    assert name == f"clinaiops-audit-trail-20261101-20261201.{fmt}"


def test_filename_uses_kind_and_period_but_no_filter() -> None:
    report = Report(
        kind=ReportKind.DECISION_LOG,
        title="x",
        period=Period(datetime(2026, 11, 1, 6, 30, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC)),
        generated_at=GENERATED,
        generated_by="../../etc/passwd",
        filters=Filters(patient_id="../../x\r\nSet-Cookie: a=b", actor="a b"),
    )

    name = render.filename(report, ReportFormat.PDF)

    assert name == "clinaiops-decision-log-20261101T063000Z-20261102.pdf"
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name)


def test_to_pdf_when_a_table_is_longer_than_the_cap_shows_the_first_rows_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(render, "PDF_MAX_ROWS", 5)
    report = _report(Section("Rows", table=_table(2, 8)))
    text = squeeze(" ".join(pdf_pages(render.to_pdf(report))))
    assert squeeze("This PDF shows the first 5 of 8 rows") in text
    assert "r4c0" in text
    assert "r5c0" not in text
    csv_body, _, _ = render.render(report, ReportFormat.CSV)
    assert len(csv_rows(csv_body.decode())) == 8  # the CSV keeps every row
