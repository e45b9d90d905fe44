"""Explanations: exact SHAP values for the linear model, top factors and plain sentences."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mlops.dp import train_sklearn_baseline
from mlops.explain import (
    Factor,
    base_value,
    describe,
    feature_info,
    feature_values,
    shap_matrix,
    shap_values,
    top_factors,
)
from mlops.model import CLASSES, TitrationModel, action_of, index_of
from policies.envelope import TitrationAction

NAMES = (
    "cuff_sbp_mean_7d",
    "cuff_dbp_mean_7d",
    "adherence_14d",
    "heart_rate_mean_7d",
    "noise",
)
SBP = NAMES.index("cuff_sbp_mean_7d")


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Increase above SBP 135 when adherent, decrease below 100, else hold."""
    rng = np.random.default_rng(seed)
    sbp = rng.normal(125.0, 20.0, n)
    dbp = 0.6 * sbp + rng.normal(0.0, 5.0, n)
    adherence = rng.uniform(0.5, 1.0, n)
    X = np.column_stack([sbp, dbp, adherence, rng.normal(72.0, 10.0, n), rng.normal(0, 1, n)])
    increase = (sbp > 135.0) & (adherence >= 0.8)
    y = np.where(increase, 2, np.where(sbp < 100.0, 0, 1)).astype(np.int64)
    return X, y


@pytest.fixture(scope="module")
def model() -> TitrationModel:
    X, y = synthetic(3000, seed=1)
    return train_sklearn_baseline(X, y, feature_names=NAMES).model


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return synthetic(50, seed=2)[0]


def test_shap_values_satisfy_efficiency_for_every_class(
    model: TitrationModel, rows: np.ndarray
) -> None:
    logits = model.logits(rows)
    for i, row in enumerate(rows):
        for action in CLASSES:
            phi = shap_values(model, row, action)
            total = base_value(model, action) + sum(phi.values())
            assert total == pytest.approx(logits[i, index_of(action)], abs=1e-6)


def test_shap_values_match_brute_force_shapley(model: TitrationModel, rows: np.ndarray) -> None:
    # Shapley values from their definition, over all 2^d coalitions, with the interventional
    # value function v(S) = logit with features outside S at the background (z = 0).
    d = len(NAMES)
    action = TitrationAction.INCREASE
    k = index_of(action)
    z = model.standardize(rows[:1])[0]

    def value(coalition: frozenset[int]) -> float:
        zs = np.array([z[i] if i in coalition else 0.0 for i in range(d)])
        return float(model.weight[k] @ zs + model.bias[k])

    phi = shap_values(model, rows[0], action)
    for i, name in enumerate(NAMES):
        others = [j for j in range(d) if j != i]
        exact = 0.0
        for size in range(d):
            weight = math.factorial(size) * math.factorial(d - size - 1) / math.factorial(d)
            for subset in itertools.combinations(others, size):
                s = frozenset(subset)
                exact += weight * (value(s | {i}) - value(s))
        assert phi[name] == pytest.approx(exact, abs=1e-9)


def test_shap_matrix_when_batched_matches_each_row_alone(
    model: TitrationModel, rows: np.ndarray
) -> None:
    actions = [CLASSES[i % 3] for i in range(len(rows))]
    phi = shap_matrix(model, rows, actions)
    for i, action in enumerate(actions):
        alone = shap_values(model, rows[i], action)
        assert phi[i].tolist() == [alone[name] for name in NAMES]


def test_shap_matrix_refuses_actions_not_matching_rows(
    model: TitrationModel, rows: np.ndarray
) -> None:
    with pytest.raises(ValueError, match="actions"):
        shap_matrix(model, rows, [TitrationAction.HOLD])


def test_shap_values_default_to_predicted_action(model: TitrationModel, rows: np.ndarray) -> None:
    predicted = action_of(int(model.predict(rows[:1])[0]))
    assert shap_values(model, rows[0]) == shap_values(model, rows[0], predicted)


def test_shap_value_of_missing_feature_is_zero(model: TitrationModel, rows: np.ndarray) -> None:
    row = rows[0].copy()
    row[NAMES.index("adherence_14d")] = math.nan
    phi = shap_values(model, row, TitrationAction.INCREASE)
    assert phi["adherence_14d"] == 0.0
    assert "adherence_14d" not in {f.feature for f in top_factors(phi, feature_values(model, row))}


def test_raising_sbp_raises_its_contribution_to_increase(
    model: TitrationModel, rows: np.ndarray
) -> None:
    # The rule increases above an SBP threshold, so the learnt weight must be positive.
    assert model.weight[index_of(TitrationAction.INCREASE), SBP] > 0
    low, high = rows[0].copy(), rows[0].copy()
    low[SBP], high[SBP] = 120.0, 150.0
    name, action = NAMES[SBP], TitrationAction.INCREASE
    assert shap_values(model, high, action)[name] > shap_values(model, low, action)[name]
    assert shap_values(model, high, action)[name] > 0


def test_shap_values_refuse_wrong_shape(model: TitrationModel) -> None:
    with pytest.raises(ValueError, match="shape"):
        shap_values(model, np.zeros(3))


def test_top_factors_rank_by_absolute_contribution_and_drop_zeros() -> None:
    phi = {"a": 0.5, "b": -2.0, "c": 0.0, "d": 1.0}
    values = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    factors = top_factors(phi, values, k=3)
    assert [f.feature for f in factors] == ["b", "d", "a"]
    assert [f.value for f in factors] == [2.0, 4.0, 1.0]
    assert not factors[0].supports
    assert [f.feature for f in top_factors(phi, values, k=10)] == ["b", "d", "a"]


def test_describe_clinician_names_top_factors_and_action(model: TitrationModel) -> None:
    row = np.array([146.0, 88.0, 0.96, 70.0, 0.0])
    action = action_of(int(model.predict(row[None, :])[0]))
    assert action is TitrationAction.INCREASE
    factors = top_factors(shap_values(model, row), feature_values(model, row), k=3)
    text = describe(factors, action, audience="clinician")
    assert text.startswith("Proposed: increase one step. Main factors: ")
    assert "7-day home SBP mean 146 mmHg (raises the case for an increase)" in text
    for factor in factors:
        assert factor.label in text


def test_describe_patient_states_pressure_and_dose_step_in_plain_words(
    model: TitrationModel,
) -> None:
    row = np.array([146.0, 88.0, 0.96, 70.0, 0.0])
    factors = top_factors(shap_values(model, row), feature_values(model, row), k=3)
    assert {f.feature for f in factors} >= {"cuff_sbp_mean_7d", "cuff_dbp_mean_7d"}
    text = describe(factors, TitrationAction.INCREASE, audience="patient")
    assert "Your home blood pressure has averaged 146/88 this week" in text
    assert text.endswith("so a step up in your dose is suggested.")
    for jargon in ("SBP", "DBP", "logit", "SHAP"):
        assert jargon not in text


def test_describe_patient_separates_factors_pointing_the_other_way() -> None:
    factors = [
        Factor("cuff_sbp_mean_7d", "7-day home SBP mean", 95.0, 1.2),
        Factor("adherence_14d", "adherence", 0.6, -0.4),
    ]
    text = describe(factors, TitrationAction.DECREASE, audience="patient")
    assert text == (
        "Your home blood pressure (top number) has averaged 95 this week, so a step down in "
        "your dose is suggested. On the other hand, some doses have been missed "
        "(you took 60% of them)."
    )


def test_describe_clinician_writes_yes_no_features_with_a_colon() -> None:
    factors = [Factor("diabetes", "diabetes", 1.0, 0.3)]
    assert describe(factors, TitrationAction.INCREASE) == (
        "Proposed: increase one step. Main factors: diabetes: yes "
        "(raises the case for an increase)."
    )


def test_describe_without_factors_still_states_the_proposal() -> None:
    assert describe([], TitrationAction.HOLD) == (
        "Proposed: hold the current dose. No single factor stood out."
    )
    assert describe([], TitrationAction.HOLD, audience="patient") == (
        "Staying on your current dose is suggested."
    )


def test_describe_refuses_unknown_audience() -> None:
    with pytest.raises(ValueError, match="audience"):
        describe([], TitrationAction.HOLD, audience="family")  # type: ignore[arg-type]


def test_feature_info_labels_known_missing_and_unknown_names() -> None:
    assert feature_info("mean_sbp_7d").label == "7-day home SBP mean"
    assert feature_info("adherence_14d").fmt(0.96) == "96%"
    assert feature_info("cuff_sbp_slope_14d").fmt(0.5) == "+0.5 mmHg/day"
    assert feature_info("cuff_sbp_mean_7d_missing").label == "7-day home SBP mean missing"
    assert feature_info("mystery_feature").label == "mystery_feature"
    assert feature_info("age_band").fmt(3.0) == "60-69 years"
