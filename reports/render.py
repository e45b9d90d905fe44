"""Render any `Report` as HTML, PDF or CSV; renderers never query the database.

HTML is a standalone document (Jinja2, autoescaped, an inline print stylesheet, nothing
fetched). PDF is that document through WeasyPrint (`reports.pdf.render_pdf`): A4, landscape
when a table has more than `WIDE_COLUMNS` columns, every page's header stating the filters in
force and its footer the title and kind, the period, the generation time (UTC) and "page N of
M"; the text is extractable.

CSV holds the tables of the report's `primary` sections: RFC 4180, UTF-8 (no byte-order
mark), CRLF line ends, one header row. When more than one primary section has a table, a
first `section` column names each row's section and the header is the union of their columns
(a cell a section does not have is empty). A report without primary tables gives its summary
and primary facts as `section,item,value` rows. Spreadsheet formula injection is defused: a cell
that starts with `=`, `+`, `-`, `@`, a tab or a carriage return is written with a leading
single quote (`'=1+2`, `'-0.30`), so a spreadsheet shows it as text instead of evaluating it.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape

from reports.models import Report, ReportFormat, Section, Table
from reports.pdf import render_pdf

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
# A table with more columns than this is "wide": smaller type, and the PDF turns landscape.
WIDE_COLUMNS = 6
# Column widths (see _column_widths): a cell's length counts up to this many characters, and
# a line of a table holds about this many characters (A4 portrait at 7.5 pt; landscape at
# 6.8 pt for a wide table).
MAX_COLUMN_WEIGHT = 40
LINE_CHARS = 120
SHORT_CELL = 22
LINE_CHARS_WIDE = 185
# A PDF table shows at most this many rows: WeasyPrint lays out about 70 rows a second on the
# 2-core reference machine, so a month's audit trail in full would take many minutes. The
# CSV and HTML exports always hold every row, and the PDF says how many it shows.
PDF_MAX_ROWS = 1000
# OWASP's list: what a spreadsheet may read as the start of a formula.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
MEDIA_TYPES: dict[ReportFormat, str] = {
    ReportFormat.HTML: "text/html; charset=utf-8",
    ReportFormat.PDF: "application/pdf",
    ReportFormat.CSV: "text/csv; charset=utf-8",
}
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?%?$")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
# Where a cell may wrap besides spaces: after underscores and slashes (reason codes, paths).
_AFTER = re.compile(r"([_/])")


def _wrappable(value: object) -> Markup:
    """Escape a cell, then allow a line break after each underscore and slash (`<wbr>`)."""
    return Markup(_AFTER.sub(r"\1<wbr>", str(escape(value))))  # noqa: S704 - escaped first


_env = Environment(
    loader=FileSystemLoader(str(TEMPLATES)),
    autoescape=True,  # every template, whatever its name: report text is never markup
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["wrappable"] = _wrappable


@dataclass(frozen=True)
class _SectionView:
    """A section as the template shows it: its table's width class and numeric columns."""

    heading: str
    facts: tuple[tuple[str, str], ...]
    notes: tuple[str, ...]
    table: Table | None
    width: str
    numeric: frozenset[int]
    widths: tuple[float, ...]


def _numeric_columns(table: Table) -> frozenset[int]:
    """Columns whose every non-empty cell is a number (right-aligned)."""
    out = set()
    for i in range(len(table.columns)):
        cells = [row[i] for row in table.rows if row[i] != ""]
        if cells and all(_NUMBER.match(c) for c in cells):
            out.add(i)
    return frozenset(out)


def _column_widths(table: Table, *, wide: bool) -> tuple[float, ...]:
    """Each column's share of the table width (percent), from its content.

    A column needs its heading's longest word (headings are bold) and the length of most of
    its cells (the 90th percentile, capped). When the needs exceed what a line holds, only
    columns of long text are shrunk (down to their heading words), so short cells (times,
    codes) and headings stay whole and long text wraps instead. PDF tables are laid out fixed
    with these widths and cells wrap anywhere they must, so a table never runs off the page.
    """
    floors, needs = [], []
    for i, heading in enumerate(table.columns):
        lengths = sorted(len(row[i]) for row in table.rows)
        p90 = lengths[int(0.9 * (len(lengths) - 1))] if lengths else 0
        floor = 1.2 * max((len(w) for w in heading.split()), default=1) + 1
        need = max(floor, float(min(p90, MAX_COLUMN_WEIGHT)))
        if need <= SHORT_CELL:  # times and codes are kept whole (digits are wide)
            floor = need = max(floor, 1.1 * p90 + 1)
        floors.append(floor)
        needs.append(need)
    budget = LINE_CHARS_WIDE if wide else LINE_CHARS
    extra = sum(needs) - sum(floors)
    scale = 1.0 if extra <= 0 else max(0.0, min(1.0, (budget - sum(floors)) / extra))
    widths = [f + (n - f) * scale for f, n in zip(floors, needs, strict=True)]
    total = sum(widths) or 1.0
    return tuple(round(100 * w / total, 2) for w in widths)


def _view(section: Section, *, for_pdf: bool = False) -> _SectionView:
    table = section.table
    notes = section.notes
    if for_pdf and table is not None and len(table.rows) > PDF_MAX_ROWS:
        notes += (
            f"This PDF shows the first {PDF_MAX_ROWS:,} of {len(table.rows):,} rows; the CSV "
            "and HTML exports of this report hold every row.",
        )
        table = Table(table.columns, table.rows[:PDF_MAX_ROWS])
    wide = table is not None and len(table.columns) > WIDE_COLUMNS
    return _SectionView(
        heading=section.heading,
        facts=section.facts,
        notes=notes,
        table=table,
        width="wide" if wide else "",
        numeric=_numeric_columns(table) if table is not None else frozenset(),
        widths=_column_widths(table, wide=wide) if table is not None else (),
    )


def generated_label(report: Report) -> str:
    """The generation time as printed: `YYYY-MM-DD HH:MM:SS UTC`."""
    return report.generated_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _html(report: Report, *, for_pdf: bool) -> str:
    sections = [_view(s, for_pdf=for_pdf) for s in report.sections]
    wide = any(s.width == "wide" for s in sections)
    return _env.get_template("report.html").render(
        report=report,
        sections=sections,
        filters=report.filters.describe(),
        period_label=report.period.label(),
        generated_at=generated_label(report),
        orientation="landscape" if wide else "portrait",
        for_pdf=for_pdf,
    )


def to_html(report: Report) -> str:
    """The report as a standalone, printable HTML document."""
    return _html(report, for_pdf=False)


def to_pdf(report: Report) -> bytes:
    """The report as PDF bytes (text-extractable; header and footer on every page)."""
    # No base folder: the document references nothing, and render_pdf refuses any URL.
    return render_pdf(_html(report, for_pdf=True))


def safe_cell(value: str) -> str:
    """A CSV cell a spreadsheet will not evaluate as a formula (see the module docstring)."""
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value


def to_csv(report: Report) -> str:
    """The primary sections' tables as CSV text (see the module docstring for the layout)."""
    tables = [(s.heading, s.table) for s in report.sections if s.primary and s.table is not None]
    if not tables:
        # A report of facts only (a model card, say): its figures as (section, item, value).
        facts = [("Summary", k, v) for k, v in report.summary] + [
            (s.heading, k, v) for s in report.sections if s.primary for k, v in s.facts
        ]
        tables = [("", Table(("section", "item", "value"), tuple(facts)))]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if len(tables) == 1:
        (_, table), *_ = tables
        writer.writerow([safe_cell(c) for c in table.columns])
        writer.writerows([safe_cell(c) for c in row] for row in table.rows)
        return out.getvalue()
    columns: list[str] = []
    for _, table in tables:
        columns.extend(c for c in table.columns if c not in columns)
    writer.writerow([safe_cell(c) for c in ["section", *columns]])
    for heading, table in tables:
        index = {c: i for i, c in enumerate(table.columns)}
        for row in table.rows:
            cells = [row[index[c]] if c in index else "" for c in columns]
            writer.writerow([safe_cell(c) for c in [heading, *cells]])
    return out.getvalue()


def _stamp(ts: datetime) -> str:
    ts = ts.astimezone(UTC)
    if (ts.hour, ts.minute, ts.second, ts.microsecond) == (0, 0, 0, 0):
        return ts.strftime("%Y%m%d")
    return ts.strftime("%Y%m%dT%H%M%SZ")


def filename(report: Report, fmt: ReportFormat) -> str:
    """A safe download name from the kind and period only (no filter or other user input):
    `clinaiops-audit-trail-20261101-20261201.pdf`."""
    stem = f"clinaiops-{report.kind}-{_stamp(report.period.start)}-{_stamp(report.period.end)}"
    return f"{_UNSAFE_NAME.sub('-', stem)}.{fmt.value}"


def render(report: Report, fmt: ReportFormat) -> tuple[bytes, str, str]:
    """The report in one format: (body bytes, media type, file name)."""
    fmt = ReportFormat(fmt)
    if fmt is ReportFormat.PDF:
        body = to_pdf(report)
    elif fmt is ReportFormat.CSV:
        body = to_csv(report).encode("utf-8")
    else:
        body = to_html(report).encode("utf-8")
    return body, MEDIA_TYPES[fmt], filename(report, fmt)
