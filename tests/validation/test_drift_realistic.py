"""Regressions found by running the drift job on realistic data (docs/monitoring.md, "Checked
on realistic data"): small frames that reproduce each false finding."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlops.features import FEATURE_NAMES
from validation import drift
from validation.monitoring import PREDICTED_ACTION, analyse, with_predictions


def _population(rows: int, rng: np.random.Generator, *, diabetic_share: float) -> pd.DataFrame:
    """Random features from one process; diabetics are fewer at target (a lower target)."""
    frame = pd.DataFrame(
        rng.normal(0.0, 1.0, (rows, len(FEATURE_NAMES))), columns=list(FEATURE_NAMES)
    )
    frame["age_band"] = rng.integers(1, 5, rows).astype(float)
    female = rng.random(rows) < 0.5
    frame["sex_female"], frame["sex_male"] = female.astype(float), (~female).astype(float)
    frame["diabetes"] = (rng.random(rows) < diabetic_share).astype(float)
    frame["ckd"] = 0.0
    frame.loc[frame["diabetes"] == 1.0, "cuff_at_target_share_14d"] -= 1.5
    frame["device_model"] = np.where(rng.random(rows) < 0.4, "A&D UA-651", "Omron HEM-7361T")
    return frame


def test_analyse_when_subgroup_rare_in_reference_leaves_it_untested() -> None:
    # Training had too few diabetics for a segment (about 20 of 150), the larger clinic has
    # enough: their segment used to be compared with the whole reference and "drifted" in
    # the at-target share, which their lower target sets, while the non-diabetic sibling
    # stayed put: located there, a false alarm on one population.
    rng = np.random.default_rng(3)
    reference = _population(150, rng, diabetic_share=0.14)
    current = _population(300, rng, diabetic_share=0.14)
    found = analyse(current, reference, html=False)
    assert found.attributions == []
    (rare,) = [s for s in found.segments if (s.dimension, s.value) == ("diabetes_or_ckd", "yes")]
    assert (rare.reference_scope, rare.columns) == ("none", ())
    assert rare.n_current >= 30 > rare.n_reference


def test_analyse_when_device_model_unseen_in_reference_compares_it_with_all() -> None:
    rng = np.random.default_rng(5)
    reference = _population(200, rng, diabetic_share=0.25)
    current = _population(300, rng, diabetic_share=0.25)
    current.loc[current.index[:60], "device_model"] = "Microlife B6"
    found = analyse(current, reference, html=False)
    (unseen,) = [s for s in found.segments if s.value == "Microlife B6"]
    assert unseen.reference_scope == "all"
    assert unseen.columns


def test_analyse_when_only_regimen_history_differs_reports_it_without_alerting() -> None:
    # Training followed the protocol at once every week; a clinic titrates at its own pace:
    # ladder position and days since the last change differ from day one, on unchanged data.
    rng = np.random.default_rng(7)
    reference = _population(200, rng, diabetic_share=0.25)
    current = _population(300, rng, diabetic_share=0.25)
    current["ladder_position"] -= 1.0
    current["days_since_change"] += 1.0
    found = analyse(current, reference, html=False)
    assert found.drifted_features == []
    assert found.attributions == []
    assert {c.column for c in found.process if c.drifted} == {
        "ladder_position",
        "days_since_change",
    }
    assert all(s.columns for s in found.segments if s.reference_scope != "none")
    assert not any(c.column in drift.PROCESS_FEATURES for s in found.segments for c in s.columns)


class _ByFirstFeature:
    """Decrease below -3.5 (one row in a few hundred), increase above 1, else hold."""

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        low, high = (x[:, 0] < -3.5).astype(float), (x[:, 0] > 1.0).astype(float)
        return np.column_stack([low, 1 - low - high, high])


def test_analyse_when_decrease_predicted_only_in_window_finds_no_prediction_drift() -> None:
    # The reference never predicted a decrease; the window predicts one. As text labels the
    # predicted action got chi-square, whose expected count for "decrease" was zero: p = 0.
    rng = np.random.default_rng(11)
    reference = _population(300, rng, diabetic_share=0.25)
    current = _population(300, rng, diabetic_share=0.25)
    reference["cuff_sbp_mean_7d"] = reference["cuff_sbp_mean_7d"].clip(lower=-3.0)
    current.loc[current.index[0], "cuff_sbp_mean_7d"] = -4.0
    model = _ByFirstFeature()
    ref, cur = with_predictions(reference, model), with_predictions(current, model)
    assert set(ref[PREDICTED_ACTION]) == {0.0, 1.0}
    assert set(cur[PREDICTED_ACTION]) == {-1.0, 0.0, 1.0}
    found = analyse(cur, ref, html=False)
    (action,) = [c for c in found.predictions if c.column == PREDICTED_ACTION]
    assert action.method == "ks"
    assert not action.drifted


def _unequal_devices(rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A reference and a window where seven patients in ten use the Omron cuff."""
    frames = []
    for rows in (300, 600):
        frame = _population(rows, rng, diabetic_share=0.25)
        frame["device_model"] = np.where(rng.random(rows) < 0.7, "Omron HEM-7361T", "A&D UA-651")
        frames.append(frame)
    return frames[0], frames[1]


def test_analyse_when_whole_window_shifts_locates_it_in_no_segment() -> None:
    # A season moves every patient's trend; the larger device segment has the power to
    # call it significant, the smaller one not: the drift was located in the larger one.
    reference, current = _unequal_devices(np.random.default_rng(1))
    current["cuff_sbp_slope_14d"] += 0.5
    found = analyse(current, reference, html=False)
    assert [c.column for c in found.drifted_features] == ["cuff_sbp_slope_14d"]
    assert found.attributions == []
    assert {
        "dimension": "device_model",
        "value": "Omron HEM-7361T",
        "features": ["cuff_sbp_slope_14d"],
    } in found.shared


def test_analyse_when_smaller_device_segment_shifts_still_locates_it() -> None:
    reference, current = _unequal_devices(np.random.default_rng(1))
    current.loc[current["device_model"] == "A&D UA-651", "cuff_dbp_mean_7d"] += 1.0
    found = analyse(current, reference, html=False)
    assert [(a.dimension, a.value) for a in found.attributions] == [("device_model", "A&D UA-651")]
    assert [c.column for c in found.attributions[0].columns] == ["cuff_dbp_mean_7d"]


class _IncreaseLowOnLadder:
    """Increase for patients low on their ladder, else hold (as a model weighs the room left)."""

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        low = (x[:, FEATURE_NAMES.index("ladder_position")] < 0.0).astype(float)
        return np.column_stack([np.zeros(len(x)), 1 - low, low])


def test_with_predictions_when_regimen_from_reference_ignores_titration_pace() -> None:
    # A retrained champion on an unchanged cohort: the clinic titrates slower than the
    # training cohort did, so more patients are low on their ladder and the model proposes
    # more increases. Scored with the reference's regimen histories on both sides, the
    # outputs move only with what is measured on the patients.
    rng = np.random.default_rng(13)
    reference = _population(200, rng, diabetic_share=0.25)
    current = _population(300, rng, diabetic_share=0.25)
    current["ladder_position"] -= 1.0
    model = _IncreaseLowOnLadder()
    raw = analyse(with_predictions(current, model), with_predictions(reference, model), html=False)
    assert {c.column for c in raw.drifted_predictions} >= {PREDICTED_ACTION, "p_increase"}
    found = analyse(
        with_predictions(current, model, regimen_from=reference),
        with_predictions(reference, model, regimen_from=reference),
        html=False,
    )
    assert found.drifted_predictions == []
    assert found.drifted_features == []


def test_analyse_when_window_column_all_missing_or_constant_skips_or_tests_it() -> None:
    # A clinic without wearables: every cuffless feature missing in the window, its
    # missingness flag constant (1) there and 0 in training; flags constant on both sides.
    rng = np.random.default_rng(17)
    reference = _population(200, rng, diabetic_share=0.25)
    current = _population(300, rng, diabetic_share=0.25)
    current["cuffless_sbp_mean_7d"] = np.nan
    reference["cuffless_sbp_mean_7d_missing"] = 0.0
    current["cuffless_sbp_mean_7d_missing"] = 1.0
    reference["cuff_sbp_mean_7d_missing"] = current["cuff_sbp_mean_7d_missing"] = 0.0
    found = analyse(current, reference, html=False)
    assert found.skipped["cuffless_sbp_mean_7d"] == "too_few_values"
    assert found.skipped["cuff_sbp_mean_7d_missing"] == "constant"
    (flag,) = [c for c in found.features if c.column == "cuffless_sbp_mean_7d_missing"]
    assert (flag.method, flag.drifted) == ("z", True)
