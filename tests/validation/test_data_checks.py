"""Data checks before training: each check passes on good data and fails, saying by how much,
on data broken in one way (table-driven, no database)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from mlops.features import FEATURE_NAMES, FEATURE_SET_VERSION, NULLABLE_FEATURES
from validation import data_checks
from validation.data_checks import Table, Thresholds

IDX = {n: j for j, n in enumerate(FEATURE_NAMES)}
SMALL = Thresholds(min_rows=20, min_patients=10, min_holdout_patients=2)


def good_table(n_patients: int = 40, rows_each: int = 2, seed: int = 0) -> Table:
    """Plausible rows for every feature, all three actions, a patient-level split."""
    rng = np.random.default_rng(seed)
    n = n_patients * rows_each
    X = np.zeros((n, len(FEATURE_NAMES)))
    for name, rng_ in data_checks.RANGES.items():
        lo, hi = rng_.lo, rng_.hi
        if rng_.integer:
            X[:, IDX[name]] = rng.integers(int(lo), int(hi) + 1, n)
        else:
            X[:, IDX[name]] = rng.uniform(lo, hi, n)
    X[:, IDX["sex_male"]] = 1.0 - X[:, IDX["sex_female"]]  # exclusive
    for name in NULLABLE_FEATURES:
        X[:, IDX[f"{name}_missing"]] = 0.0  # nothing missing
    groups = np.repeat([f"p{i:03d}" for i in range(n_patients)], rows_each)
    holdout = np.repeat(np.arange(n_patients) % 4 == 0, rows_each)
    y = np.arange(n) % 3
    return Table(FEATURE_NAMES, FEATURE_SET_VERSION, X, y.astype(np.int64), groups, holdout)


def by_name(results: list[data_checks.CheckResult]) -> dict[str, data_checks.CheckResult]:
    return {r.name: r for r in results}


def test_run_checks_when_data_are_good_all_pass() -> None:
    results = data_checks.run_checks(good_table(), SMALL)
    assert [r.name for r in results] == [
        "schema",
        "ranges",
        "consistency",
        "missingness",
        "label_balance",
        "min_rows",
        "min_patients",
        "min_holdout_patients",
    ]
    assert data_checks.failed(results) == []
    assert data_checks.refusal(results) == ""
    for r in results:
        assert set(r.as_dict()) == {"name", "passed", "measured", "threshold", "detail"}


def _set(name: str, value: float, rows: slice = slice(0, 3)) -> Callable[[Table], Table]:
    def change(t: Table) -> Table:
        X = t.X.copy()
        X[rows, IDX[name]] = value
        return replace(t, X=X)

    return change


def _missing(name: str, share: float) -> Callable[[Table], Table]:
    def change(t: Table) -> Table:
        X = t.X.copy()
        k = round(share * X.shape[0])
        X[:k, IDX[name]] = np.nan
        X[:k, IDX[f"{name}_missing"]] = 1.0
        return replace(t, X=X)

    return change


def _labels(counts: tuple[int, int, int]) -> Callable[[Table], Table]:
    def change(t: Table) -> Table:
        y = np.concatenate([np.full(c, k) for k, c in enumerate(counts)]).astype(np.int64)
        return replace(t, y=y[: t.X.shape[0]])

    return change


# (what is broken, check that fails, words its detail must contain)
CASES: list[tuple[str, Callable[[Table], Table], str, list[str]]] = [
    (
        "another feature set",
        lambda t: replace(t, feature_set="clinaiops-features/1"),
        "schema",
        ["clinaiops-features/1"],
    ),
    (
        "a feature renamed",
        lambda t: replace(t, feature_names=("sbp_7d", *FEATURE_NAMES[1:])),
        "schema",
        ["1 features missing", "cuff_sbp_mean_7d", "sbp_7d"],
    ),
    (
        "features reordered",
        lambda t: replace(
            t, feature_names=(FEATURE_NAMES[1], FEATURE_NAMES[0], *FEATURE_NAMES[2:])
        ),
        "schema",
        ["another order"],
    ),
    ("SBP in kPa", _set("cuff_sbp_mean_7d", 18.0), "ranges", ["cuff_sbp_mean_7d: 3 values"]),
    ("a share above 1", _set("adherence_14d", 1.5, slice(0, 1)), "ranges", ["adherence_14d: 1"]),
    ("a fractional count", _set("cuff_days_7d", 4.5, slice(0, 2)), "ranges", ["cuff_days_7d: 2"]),
    ("age band 6", _set("age_band", 6.0, slice(0, 1)), "ranges", ["age_band"]),
    (
        "an indicator that lies",
        _set("adherence_14d_missing", 1.0, slice(0, 4)),
        "consistency",
        ["adherence_14d_missing: 4 rows"],
    ),
    ("both sexes", _set("sex_male", 1.0, slice(None)), "consistency", ["sex_female+sex_male"]),
    (
        "cuff means mostly missing",
        _missing("cuff_sbp_mean_7d", 0.25),
        "missingness",
        ["cuff_sbp_mean_7d missing in 25.0%", "at most 5%", "20.0% over"],
    ),
    (
        "a never-missing feature missing",
        _set("ladder_position", np.nan, slice(0, 1)),
        "missingness",
        ["ladder_position"],
    ),
    (
        "no decreases",
        _labels((0, 50, 30)),
        "label_balance",
        ["decrease: 0 of 80 rows (0.0%)", "below the 1% floor by 1.0%"],
    ),
    (
        "too few rows",
        lambda t: replace(t, X=t.X[:10], y=t.y[:10], groups=t.groups[:10], holdout=t.holdout[:10]),
        "min_rows",
        ["10 rows, at least 20 needed (10 short)"],
    ),
    (
        "too few patients",
        lambda t: replace(t, groups=np.where(np.arange(len(t.groups)) % 2 == 0, "a", "b")),
        "min_patients",
        ["2 patients, at least 10 needed (8 short)"],
    ),
    (
        "no holdout",
        lambda t: replace(t, holdout=np.zeros_like(t.holdout)),
        "min_holdout_patients",
        ["0 holdout patients", "(2 short)"],
    ),
]


@pytest.mark.parametrize(("broken", "change", "check", "words"), CASES, ids=[c[0] for c in CASES])
def test_run_checks_when_data_broken_fails_that_check_and_says_by_how_much(
    broken: str, change: Callable[[Table], Table], check: str, words: list[str]
) -> None:
    results = data_checks.run_checks(change(good_table()), SMALL)
    failing = by_name(data_checks.failed(results))
    assert check in failing, f"{broken}: {check} passed"
    for word in words:
        assert word in failing[check].detail
    assert f"{check}: " in data_checks.refusal(results)


def test_run_checks_when_schema_fails_skips_the_column_checks() -> None:
    table = replace(good_table(), feature_set="clinaiops-features/1")
    names = [r.name for r in data_checks.run_checks(table, SMALL)]
    assert names[0] == "schema"
    assert "ranges" not in names
    assert "missingness" not in names
    assert "min_rows" in names


def test_check_missingness_when_wearable_absent_passes() -> None:
    table = good_table()
    for name in ("heart_rate_mean_7d", "steps_daily_mean_7d", "cuffless_sbp_mean_7d"):
        table = _missing(name, 1.0)(table)
    result = data_checks.check_missingness(table)
    assert result.passed
    assert result.measured["missing_share"]["heart_rate_mean_7d"] == 1.0


def test_check_label_balance_when_empty_fails() -> None:
    table = good_table()
    empty = replace(
        table, X=table.X[:0], y=table.y[:0], groups=table.groups[:0], holdout=table.holdout[:0]
    )
    result = data_checks.check_label_balance(empty)
    assert not result.passed
    assert result.measured["counts"] == {"decrease": 0, "hold": 0, "increase": 0}


def test_ranges_when_defined_cover_every_feature() -> None:
    assert set(data_checks.RANGES) == set(FEATURE_NAMES)
    assert set(data_checks.MAX_MISSING) == set(FEATURE_NAMES)
    assert all(0.0 <= v <= 1.0 for v in data_checks.MAX_MISSING.values())
