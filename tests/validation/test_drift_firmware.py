"""The simulator's firmware-drift scenario is caught and attributed to the device model.

A small simulated cohort is compared with a reference cohort twice: as it is, and with one
cuff model reading 10 mmHg high for its last two weeks (`FirmwareDrift`). No database: the
frames go straight to `validation.monitoring.analyse` (Evidently)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from device_ingest.simulator import FirmwareDrift, Scenario
from mlops.features import FEATURE_NAMES
from tests.validation.drift_sim import A_AND_D, OMRON, frame, simulate
from validation.drift import P_VALUE_TESTS, Stattest, Thresholds
from validation.monitoring import PREDICTED_ACTION, Analysis, analyse, with_predictions

pytestmark = pytest.mark.slow
BP_FEATURES = ("cuff_sbp", "cuff_dbp", "cuff_at_target")


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return frame(*simulate(300, seed=7))


@pytest.fixture(scope="module")
def steady() -> pd.DataFrame:
    return frame(*simulate(200, seed=11))


@pytest.fixture(scope="module")
def drifted() -> pd.DataFrame:
    scenario = Scenario(firmware_drift=FirmwareDrift(A_AND_D, from_day=7))
    return frame(*simulate(200, seed=11, scenario=scenario))


@pytest.fixture(scope="module")
def drifted_analysis(drifted: pd.DataFrame, reference: pd.DataFrame) -> Analysis:
    return analyse(drifted, reference)


def test_analyse_when_no_firmware_drift_flags_nothing(
    steady: pd.DataFrame, reference: pd.DataFrame
) -> None:
    found = analyse(steady, reference, html=False)
    assert found.drifted_features == []
    assert [s.label for s in found.segments if s.drifted_columns] == []
    assert found.attributions == []


def test_analyse_when_firmware_drifts_attributes_bp_features_to_that_device_model_only(
    drifted_analysis: Analysis,
) -> None:
    (attribution,) = drifted_analysis.attributions
    assert (attribution.dimension, attribution.value) == ("device_model", A_AND_D)
    assert attribution.steady_siblings == (OMRON,)
    moved = [c.column for c in attribution.columns]
    assert "cuff_dbp_mean_7d" in moved
    assert all(name.startswith(BP_FEATURES) for name in moved)
    for column in attribution.columns:  # by how much, with which test
        assert column.method is Stattest.KS
        assert column.score < column.threshold < 0.05 / 49


def test_analyse_when_firmware_drifts_leaves_other_device_model_and_subgroups_steady(
    drifted_analysis: Analysis,
) -> None:
    moved = {s.label for s in drifted_analysis.segments if s.drifted_columns}
    assert moved == {f"device_model={A_AND_D}"}
    tested = {s.label for s in drifted_analysis.segments}
    assert f"device_model={OMRON}" in tested
    assert {"sex=female", "sex=male", "diabetes_or_ckd=no"} <= tested


def test_analyse_when_run_keeps_evidently_report_with_p_value_tests_corrected(
    drifted_analysis: Analysis,
) -> None:
    assert drifted_analysis.html is not None
    assert "<html" in drifted_analysis.html[:500].lower()
    names = [m["metric_name"] for m in drifted_analysis.evidently["metrics"]]
    assert any(n.startswith("DriftedColumnsCount") for n in names)
    tested = [c for c in drifted_analysis.features if c.method in P_VALUE_TESTS]
    assert tested
    # Corrected over every overall test, the regimen-history ones reported apart included.
    overall = len(drifted_analysis.features) + len(drifted_analysis.process)
    assert {c.threshold for c in tested} == {0.05 / overall}


def test_analyse_when_reference_lacks_device_models_compares_each_with_whole_reference(
    drifted: pd.DataFrame, reference: pd.DataFrame
) -> None:
    found = analyse(drifted, reference.drop(columns=["device_model"]), html=False)
    devices = [s for s in found.segments if s.dimension == "device_model"]
    assert {s.reference_scope for s in devices} == {"all"}
    assert [(a.dimension, a.value) for a in found.attributions] == [("device_model", A_AND_D)]


def test_analyse_when_too_few_current_rows_tests_nothing(reference: pd.DataFrame) -> None:
    found = analyse(reference.head(29), reference, thresholds=Thresholds(min_rows=30))
    assert (found.features, found.segments, found.html) == ([], [], None)


class _ThresholdModel:
    """Increase above 140 mmHg systolic, hold otherwise."""

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        high = (np.nan_to_num(x[:, 0]) >= 140).astype(float)
        return np.column_stack([np.zeros(len(x)), 1 - high, high])


def test_analyse_when_model_outputs_given_tests_prediction_drift(
    steady: pd.DataFrame, reference: pd.DataFrame
) -> None:
    model = _ThresholdModel()
    current = with_predictions(steady, model)
    shifted = current.copy()
    shifted[PREDICTED_ACTION] = 1.0  # increase
    shifted["p_increase"] = 1.0
    found = analyse(shifted, with_predictions(reference, model), html=False)
    assert {c.column for c in found.predictions} == {PREDICTED_ACTION, "p_increase"}
    assert {c.column for c in found.drifted_predictions} == {PREDICTED_ACTION, "p_increase"}
    assert set(current[PREDICTED_ACTION]) <= {0.0, 1.0}  # hold, increase


def _synthetic(rows: int, rng: np.random.Generator, *, shift: float) -> pd.DataFrame:
    """Random features; device A's users are mostly in their fifties, and their systolic
    readings are `shift` standard deviations high."""
    frame = pd.DataFrame(
        rng.normal(0.0, 1.0, (rows, len(FEATURE_NAMES))), columns=list(FEATURE_NAMES)
    )
    fifties = rng.random(rows) < 0.5
    frame["age_band"] = np.where(fifties, 2.0, 3.0)
    frame["device_model"] = np.where(rng.random(rows) < np.where(fifties, 0.8, 0.2), "A", "B")
    for name in ("sex_female", "sex_male", "diabetes", "ckd"):
        frame[name] = 0.0
    frame.loc[frame["device_model"] == "A", "cuff_sbp_mean_7d"] += shift
    return frame


def test_analyse_when_device_drift_spills_into_subgroup_explains_subgroup_away() -> None:
    rng = np.random.default_rng(4)
    found = analyse(_synthetic(3000, rng, shift=0.35), _synthetic(3000, rng, shift=0.0), html=False)
    assert [(a.dimension, a.value) for a in found.attributions] == [("device_model", "A")]
    assert found.explained == [
        {"dimension": "age_band", "value": "50-59", "explained_by": ["device_model=A"]}
    ]
