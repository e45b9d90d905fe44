"""Plotly figure specifications for the proposal page, built as plain JSON (pure).

The page embeds each figure as a JSON data block that `portal.js` hands to plotly.js (served
from the installed `plotly` package); the same data are also on the page as tables and
summaries, so nothing depends on JavaScript. No inline script: the CSP allows only 'self'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

CUFF = "#0b5cad"
CUFF_DIA = "#5b9bd5"
CUFFLESS = "#9aa5b1"
TARGET_BAND = "rgba(46, 139, 87, 0.12)"
MED = "#6a3d9a"
ALERT = "#c0392b"
_FONT = {"family": "system-ui, -apple-system, Segoe UI, sans-serif", "size": 12}
# No logo, no link to an online editor, nothing that would load from another site.
CONFIG: dict[str, Any] = {
    "displaylogo": False,
    "responsive": True,
    "modeBarButtonsToRemove": ["lasso2d", "select2d", "toImage"],
}


@dataclass(frozen=True)
class BpPoint:
    """One blood-pressure reading on the chart."""

    at: datetime
    systolic: float
    diastolic: float
    validated_cuff: bool


@dataclass(frozen=True)
class Marker:
    """A dated event drawn as a vertical line: a dose change or an alert."""

    at: datetime
    label: str


def _iso(value: datetime | date) -> str:
    """plotly.js reads dates without an offset: UTC times are written as naive UTC."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat(timespec="seconds")
    return value.isoformat()


def _layout(height: int, **extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
        "height": height,
        "margin": {"l": 48, "r": 16, "t": 28, "b": 40},
        "font": _FONT,
        "paper_bgcolor": "#fff",
        "plot_bgcolor": "#fff",
        "legend": {"orientation": "h", "y": -0.18, "x": 0},
        "hovermode": "closest",
    }
    layout.update(extra)
    return layout


def bp_figure(
    points: Sequence[BpPoint],
    *,
    target: tuple[float, float],
    dose_changes: Sequence[Marker] = (),
    alerts: Sequence[Marker] = (),
) -> dict[str, Any]:
    """Home BP over time: validated-cuff readings solid, cuffless hollow and grey, the target
    band shaded, dose changes and alerts as dated lines."""
    cuff = [p for p in points if p.validated_cuff]
    other = [p for p in points if not p.validated_cuff]
    data: list[dict[str, Any]] = []

    def series(rows: Sequence[BpPoint], name: str, which: str, style: dict[str, Any]) -> None:
        if rows:
            data.append(
                {
                    "type": "scatter",
                    "mode": "markers",
                    "name": name,
                    "x": [_iso(p.at) for p in rows],
                    "y": [getattr(p, which) for p in rows],
                    "marker": style,
                    "hovertemplate": "%{x|%Y-%m-%d %H:%M} UTC<br>%{y:.0f} mmHg<extra>"
                    + name
                    + "</extra>",
                }
            )

    series(cuff, "Systolic, validated cuff", "systolic", {"color": CUFF, "size": 7})
    series(cuff, "Diastolic, validated cuff", "diastolic", {"color": CUFF_DIA, "size": 6})
    series(
        other,
        "Systolic, cuffless (not used for titration)",
        "systolic",
        {"color": CUFFLESS, "size": 7, "symbol": "circle-open"},
    )
    series(
        other,
        "Diastolic, cuffless",
        "diastolic",
        {"color": CUFFLESS, "size": 6, "symbol": "diamond-open"},
    )
    shapes: list[dict[str, Any]] = [
        {
            "type": "rect",
            "xref": "paper",
            "x0": 0,
            "x1": 1,
            "yref": "y",
            "y0": 90,
            "y1": target[0],
            "fillcolor": TARGET_BAND,
            "line": {"width": 0},
            "layer": "below",
        },
        {
            "type": "line",
            "xref": "paper",
            "x0": 0,
            "x1": 1,
            "y0": target[0],
            "y1": target[0],
            "line": {"color": "#2e8b57", "width": 1, "dash": "dash"},
        },
        {
            "type": "line",
            "xref": "paper",
            "x0": 0,
            "x1": 1,
            "y0": target[1],
            "y1": target[1],
            "line": {"color": "#2e8b57", "width": 1, "dash": "dot"},
        },
    ]
    annotations: list[dict[str, Any]] = [
        {
            "xref": "paper",
            "x": 0.01,
            "xanchor": "left",
            "y": value,
            "yanchor": "bottom",
            "text": f"target {name} < {value:.0f}",
            "showarrow": False,
            "bgcolor": "rgba(255, 255, 255, 0.8)",
            "font": {"color": "#2e8b57", "size": 11},
        }
        for name, value in (("systolic", target[0]), ("diastolic", target[1]))
    ]
    # Alert labels above the plot, dose-change labels just inside its top edge: an alert and
    # the change it led to are often close in time, and their labels must not overlap.
    for markers, color, dash, label_y, anchor in (
        (dose_changes, MED, "solid", 0.99, "top"),
        (alerts, ALERT, "dot", 1.0, "bottom"),
    ):
        for m in markers:
            shapes.append(
                {
                    "type": "line",
                    "xref": "x",
                    "x0": _iso(m.at),
                    "x1": _iso(m.at),
                    "yref": "paper",
                    "y0": 0,
                    "y1": 1,
                    "line": {"color": color, "width": 1.5, "dash": dash},
                }
            )
            annotations.append(
                {
                    "xref": "x",
                    "x": _iso(m.at),
                    "xanchor": "right",
                    "yref": "paper",
                    "y": label_y,
                    "yanchor": anchor,
                    "text": m.label,
                    "showarrow": False,
                    "bgcolor": "rgba(255, 255, 255, 0.85)",
                    "font": {"color": color, "size": 10},
                }
            )
    ys = [v for p in points for v in (p.systolic, p.diastolic)]
    low = min([*ys, target[1]], default=60.0) - 10
    high = max([*ys, target[0]], default=160.0) + 10
    layout = _layout(
        380,
        xaxis={"type": "date", "title": {"text": "UTC"}, "gridcolor": "#eef1f4"},
        yaxis={"title": {"text": "mmHg"}, "range": [low, high], "gridcolor": "#eef1f4"},
        shapes=shapes,
        annotations=annotations,
    )
    return {"data": data, "layout": layout, "config": CONFIG}


def adherence_figure(days: Sequence[tuple[date, int, int]]) -> dict[str, Any]:
    """Doses reported taken (green) and missed (red) per day, stacked to 100%; a day with no
    report is a gap."""
    known = [(d, taken, missed) for d, taken, missed in days if taken + missed]
    x = [_iso(d) for d, _, _ in known]

    def share(n: int, total: int) -> int:
        return round(100 * n / total)

    data = [
        {
            "type": "bar",
            "name": "taken",
            "x": x,
            "y": [share(t, t + m) for _, t, m in known],
            "marker": {"color": "#2e8b57"},
            "hovertemplate": "%{x|%Y-%m-%d}: %{y}% taken<extra></extra>",
        },
        {
            "type": "bar",
            "name": "missed",
            "x": x,
            "y": [share(m, t + m) for _, t, m in known],
            "marker": {"color": ALERT},
            "hovertemplate": "%{x|%Y-%m-%d}: %{y}% missed<extra></extra>",
        },
    ]
    layout = _layout(
        210,
        barmode="stack",
        bargap=0.15,
        legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"},
        margin={"l": 48, "r": 16, "t": 28, "b": 32},
        xaxis={"type": "date", "gridcolor": "#eef1f4"},
        yaxis={"title": {"text": "% of doses"}, "range": [0, 100], "gridcolor": "#eef1f4"},
    )
    return {"data": data, "layout": layout, "config": CONFIG}


def shap_figure(factors: Sequence[tuple[str, float]]) -> dict[str, Any]:
    """SHAP values as horizontal bars, largest magnitude on top: right pushes towards the
    proposed action, left away from it."""
    ordered = sorted(factors, key=lambda f: abs(f[1]))
    data = [
        {
            "type": "bar",
            "orientation": "h",
            "x": [round(v, 3) for _, v in ordered],
            "y": [label for label, _ in ordered],
            "marker": {"color": [CUFF if v >= 0 else "#d68910" for _, v in ordered]},
            "hovertemplate": "%{y}: %{x:+.3f}<extra></extra>",
        }
    ]
    layout = _layout(
        max(160, 34 * len(ordered) + 70),
        showlegend=False,
        margin={"l": 230, "r": 16, "t": 16, "b": 40},
        xaxis={
            "title": {"text": "contribution to the proposed action (log-odds)"},
            "zeroline": True,
            "zerolinecolor": "#8795a1",
            "gridcolor": "#eef1f4",
        },
        yaxis={"automargin": True},
    )
    return {"data": data, "layout": layout, "config": CONFIG}
