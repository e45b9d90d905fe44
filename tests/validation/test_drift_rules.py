"""The drift monitor's pure rules: test choice, verdicts on scores, attribution to segments,
the override-rate signal and a report's status. No database, no Evidently."""

from __future__ import annotations

import math

import pytest

from validation.drift import (
    Attribution,
    ColumnDrift,
    OverrideSignal,
    Reason,
    SegmentDrift,
    Stattest,
    Status,
    Thresholds,
    age_band_label,
    attribute,
    bonferroni,
    choose_test,
    device_label,
    device_name,
    diabetes_or_ckd_label,
    headline,
    is_drift,
    one_sided_two_proportion_p,
    override_signal,
    sex_label,
    verdict,
)

T = Thresholds()


@pytest.mark.parametrize(
    ("n_reference", "n_current", "distinct", "method", "threshold", "categorical"),
    [
        (5000, 5000, 40, Stattest.WASSERSTEIN, 0.1, False),
        (5000, 5000, 5, Stattest.JENSEN_SHANNON, 0.1, True),
        (5000, 5000, 2, Stattest.JENSEN_SHANNON, 0.1, True),
        (1000, 1000, 6, Stattest.WASSERSTEIN, 0.1, False),  # large from 1000 on, both sides
        (5000, 999, 40, Stattest.KS, 0.001, False),  # the smaller sample decides
        (999, 5000, 40, Stattest.KS, 0.001, False),
        (300, 200, 2, Stattest.Z, 0.001, True),
        (300, 200, 3, Stattest.KS, 0.001, False),  # ordinal few-valued: K-S, not chi-square
        (300, 200, 5, Stattest.KS, 0.001, False),
    ],
)
def test_choose_test_when_sizes_and_values_vary_picks_evidently_default_on_smaller_sample(
    n_reference: int,
    n_current: int,
    distinct: int,
    method: Stattest,
    threshold: float,
    categorical: bool,
) -> None:
    choice = choose_test(
        n_reference=n_reference, n_current=n_current, distinct=distinct, alpha=0.001, thresholds=T
    )
    assert (choice.method, choice.threshold, choice.categorical) == (
        method,
        threshold,
        categorical,
    )


def test_choose_test_when_column_constant_refuses() -> None:
    with pytest.raises(ValueError, match="constant"):
        choose_test(n_reference=10, n_current=10, distinct=1, alpha=0.05, thresholds=T)


@pytest.mark.parametrize(
    ("method", "score", "threshold", "drifted"),
    [
        (Stattest.KS, 0.0009, 0.001, True),
        (Stattest.KS, 0.001, 0.001, False),  # p-values: strictly below
        (Stattest.Z, 0.2, 0.001, False),
        (Stattest.CHI_SQUARE, 1e-12, 0.05, True),
        (Stattest.WASSERSTEIN, 0.1, 0.1, True),  # distances: at or above
        (Stattest.WASSERSTEIN, 0.0999, 0.1, False),
        (Stattest.JENSEN_SHANNON, 0.5, 0.1, True),
        (Stattest.KS, math.nan, 0.05, False),  # unscored: never drift by itself
        (Stattest.WASSERSTEIN, math.nan, 0.1, False),
    ],
)
def test_is_drift_when_scored_follows_the_tests_direction(
    method: Stattest, score: float, threshold: float, drifted: bool
) -> None:
    assert is_drift(method, score, threshold) is drifted


@pytest.mark.parametrize(("alpha", "tests", "expected"), [(0.05, 1, 0.05), (0.05, 50, 0.001)])
def test_bonferroni_when_tests_counted_splits_alpha(
    alpha: float, tests: int, expected: float
) -> None:
    assert bonferroni(alpha, tests) == pytest.approx(expected)


def test_bonferroni_when_no_tests_refuses() -> None:
    with pytest.raises(ValueError, match="at least one"):
        bonferroni(0.05, 0)


@pytest.mark.parametrize(
    ("female", "male", "label"),
    [(1.0, 0.0, "female"), (0.0, 1.0, "male"), (0.0, 0.0, "other or unknown")],
)
def test_sex_label_when_features_given_names_segment(
    female: float, male: float, label: str
) -> None:
    assert sex_label(female, male) == label


@pytest.mark.parametrize(
    ("band", "label"),
    [(0.0, "<40"), (1.0, "40-49"), (3.0, "60-69"), (5.0, ">=80"), (math.nan, "unknown")],
)
def test_age_band_label_when_encoded_band_given_names_it(band: float, label: str) -> None:
    assert age_band_label(band) == label


@pytest.mark.parametrize("band", [6.0, -1.0, 2.5])
def test_age_band_label_when_not_a_band_refuses(band: float) -> None:
    with pytest.raises(ValueError, match="age band"):
        age_band_label(band)


@pytest.mark.parametrize(
    ("diabetes", "ckd", "label"), [(1.0, 0.0, "yes"), (0.0, 1.0, "yes"), (0.0, 0.0, "no")]
)
def test_diabetes_or_ckd_label_when_either_present_says_yes(
    diabetes: float, ckd: float, label: str
) -> None:
    assert diabetes_or_ckd_label(diabetes, ckd) == label


@pytest.mark.parametrize(
    ("model", "label"), [("A&D UA-651", "A&D UA-651"), ("  ", "unknown"), (None, "unknown")]
)
def test_device_label_when_model_blank_is_unknown(model: str | None, label: str) -> None:
    assert device_label(model) == label


@pytest.mark.parametrize(
    ("manufacturer", "model", "name"),
    [
        ("A&D", "UA-651", "A&D UA-651"),  # as readings store it: the maker on the device
        ("", "A&D UA-651", "A&D UA-651"),
        ("Omron", "Omron HEM-7361T", "Omron HEM-7361T"),
        (" Omron ", " HEM-7361T ", "Omron HEM-7361T"),
        ("", "", ""),
    ],
)
def test_device_name_when_maker_stored_apart_names_model_as_reference_does(
    manufacturer: str, model: str, name: str
) -> None:
    assert device_name(manufacturer, model) == name


def _col(name: str, p: float) -> ColumnDrift:
    return ColumnDrift(name, Stattest.KS, p, 0.001, 300, 100)


def _seg(dimension: str, value: str, **scores: float) -> SegmentDrift:
    return SegmentDrift(
        dimension, value, 100, 300, "segment", tuple(_col(n, p) for n, p in scores.items())
    )


def test_attribute_when_one_device_model_moves_names_it_alone() -> None:
    segments = [
        _seg("device_model", "A&D UA-651", cuff_dbp_mean_7d=1e-8, cuff_sbp_mean_7d=1e-4, hr=0.5),
        _seg("device_model", "Omron HEM-7361T", cuff_dbp_mean_7d=0.4, cuff_sbp_mean_7d=0.6, hr=0.5),
    ]
    (found,) = attribute(segments)
    assert (found.dimension, found.value) == ("device_model", "A&D UA-651")
    assert [c.column for c in found.columns] == ["cuff_dbp_mean_7d", "cuff_sbp_mean_7d"]
    assert found.steady_siblings == ("Omron HEM-7361T",)


def test_attribute_when_every_segment_moves_names_none() -> None:
    segments = [
        _seg("sex", "female", cuff_sbp_mean_7d=1e-6),
        _seg("sex", "male", cuff_sbp_mean_7d=1e-5),
    ]
    assert attribute(segments) == []


def test_attribute_when_sibling_did_not_test_the_feature_names_none() -> None:
    segments = [_seg("age_band", "60-69", cuff_sbp_mean_7d=1e-6), _seg("age_band", "70-79")]
    assert attribute(segments) == []


def test_attribute_when_alone_in_its_dimension_names_none() -> None:
    assert attribute([_seg("device_model", "Omron HEM-7361T", cuff_sbp_mean_7d=1e-9)]) == []


def test_attribute_when_several_located_orders_device_models_first_then_strongest() -> None:
    segments = [
        _seg("age_band", "<40", y=1e-12),
        _seg("age_band", "40-49", y=0.3),
        _seg("age_band", "50-59", y=1e-6),
        _seg("device_model", "A", x=1e-4),
        _seg("device_model", "B", x=0.5),
    ]
    assert [(a.dimension, a.value) for a in attribute(segments)] == [
        ("device_model", "A"),
        ("age_band", "<40"),
        ("age_band", "50-59"),
    ]


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2", "expected"),
    [
        (30, 100, 10, 100, 0.000_203_5),  # z = 0.2 / 0.0566 = 3.536
        (10, 100, 10, 100, 0.5),
        (10, 100, 30, 100, 0.999_796_5),
        (0, 50, 0, 50, 1.0),  # no variance, no rise
        (50, 50, 0, 50, 0.0),
    ],
)
def test_one_sided_two_proportion_p_when_counts_given_matches_normal_tail(
    x1: int, n1: int, x2: int, n2: int, expected: float
) -> None:
    assert one_sided_two_proportion_p(x1, n1, x2, n2) == pytest.approx(expected, abs=2e-6)


@pytest.mark.parametrize(("x1", "n1", "x2", "n2"), [(1, 0, 0, 1), (3, 2, 0, 1), (-1, 5, 0, 5)])
def test_one_sided_two_proportion_p_when_counts_impossible_refuses(
    x1: int, n1: int, x2: int, n2: int
) -> None:
    with pytest.raises(ValueError, match="counts"):
        one_sided_two_proportion_p(x1, n1, x2, n2)


@pytest.mark.parametrize(
    ("current", "previous", "alert", "reason"),
    [
        ((5, 19), (0, 100), False, "too_few_decisions"),
        ((10, 20), (0, 0), True, "above_ceiling"),  # half overridden: alert without baseline
        ((9, 20), (0, 10), False, "no_baseline"),
        ((30, 100), (10, 100), True, "increase"),  # +20 points, p = 0.0002
        ((18, 100), (10, 100), False, "steady"),  # +8 points: below the 10-point rise
        ((6, 20), (4, 20), False, "steady"),  # +10 points, p = 0.24: could be chance
        ((10, 100), (30, 100), False, "steady"),  # a fall is not concept drift
    ],
)
def test_override_signal_when_rates_compared_alerts_on_marked_rise(
    current: tuple[int, int], previous: tuple[int, int], alert: bool, reason: str
) -> None:
    signal = override_signal(
        current_overridden=current[0],
        current_decided=current[1],
        previous_overridden=previous[0],
        previous_decided=previous[1],
        thresholds=T,
    )
    assert (signal.alert, signal.reason) == (alert, reason)


def test_override_signal_when_more_overrides_than_decisions_refuses() -> None:
    with pytest.raises(ValueError, match="more overrides"):
        override_signal(
            current_overridden=3,
            current_decided=2,
            previous_overridden=0,
            previous_decided=0,
            thresholds=T,
        )


def _override(alert: bool) -> OverrideSignal:
    return OverrideSignal(30, 100, 10, 100, 0.0002, alert, "increase" if alert else "steady")


_ATTRIBUTION = Attribution("device_model", "A", (_col("x", 1e-9),), ("B",))


@pytest.mark.parametrize(
    ("kw", "status", "reasons"),
    [
        ({}, Status.OK, ()),
        ({"reference_available": False}, Status.NO_REFERENCE, ()),
        ({"n_current": 29}, Status.INSUFFICIENT_DATA, ()),
        ({"drifted_features": ["x"]}, Status.ALERT, (Reason.FEATURE_DRIFT,)),
        ({"attributions": [_ATTRIBUTION]}, Status.ALERT, (Reason.SEGMENT_DRIFT,)),
        ({"drifted_predictions": ["p_increase"]}, Status.ALERT, (Reason.PREDICTION_DRIFT,)),
        ({"override": _override(True)}, Status.ALERT, (Reason.OVERRIDE_RATE,)),
        ({"override": _override(False)}, Status.OK, ()),
        # Overrides alert even when the features could not be tested.
        (
            {"reference_available": False, "n_current": 0, "override": _override(True)},
            Status.ALERT,
            (Reason.OVERRIDE_RATE,),
        ),
        (
            {"drifted_features": ["x"], "attributions": [_ATTRIBUTION]},
            Status.ALERT,
            (Reason.FEATURE_DRIFT, Reason.SEGMENT_DRIFT),
        ),
    ],
)
def test_verdict_when_findings_vary_gives_status_and_every_reason(
    kw: dict[str, object], status: Status, reasons: tuple[Reason, ...]
) -> None:
    args: dict[str, object] = {
        "reference_available": True,
        "n_current": 30,
        "drifted_features": [],
        "attributions": [],
        "drifted_predictions": [],
        "override": None,
        "thresholds": T,
    }
    found = verdict(**{**args, **kw})  # type: ignore[arg-type]
    assert (found.status, found.reasons) == (status, reasons)


def test_headline_when_alert_names_segment_feature_test_and_score() -> None:
    text = headline(
        Status.ALERT,
        drifted_features=[],
        attributions=[_ATTRIBUTION],
        override=_override(True),
        drifted_predictions=[],
    )
    assert text == "Drift: device_model A: x (K-S p_value 1e-09); override rate 30% (was 10%)."


@pytest.mark.parametrize("status", [Status.OK, Status.INSUFFICIENT_DATA, Status.NO_REFERENCE])
def test_headline_when_no_alert_says_why(status: Status) -> None:
    text = headline(
        status, drifted_features=[], attributions=[], override=None, drifted_predictions=[]
    )
    assert text
    assert "Drift:" not in text


def test_headline_when_nothing_tested_gives_counts_and_reason() -> None:
    # Seen on a 12-patient demo and a window whose one evaluation had too few readings:
    # "too few evaluated patients" said neither how many nor how many were needed.
    quiet = {"drifted_features": [], "attributions": [], "override": None}
    thin = headline(
        Status.INSUFFICIENT_DATA, **quiet, drifted_predictions=[], n_current=12, min_rows=30
    )
    assert (
        thin == "Too few patients to test: 12 scored in the window with enough readings, 30 needed."
    )
    lost = headline(
        Status.NO_REFERENCE,
        **quiet,
        drifted_predictions=[],
        reference_error="the training cohort used a scenario that cannot be rebuilt",
    )
    assert "scenario that cannot be rebuilt" in lost


@pytest.mark.parametrize(
    "kw",
    [
        {"family_alpha": 0.0},
        {"override_alpha": 1.0},
        {"min_rows": 1},
        {"wasserstein": 0.0},
        {"max_categories": 1},
        {"override_increase": 1.5},
    ],
)
def test_thresholds_when_out_of_range_refuse(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must|lie|are"):
        Thresholds(**kw)  # type: ignore[arg-type]
