"""The titration model: probabilities, missing values, calibration, metrics and artifacts."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from mlops.dp import train_baseline, train_sklearn_baseline
from mlops.model import (
    CLASSES,
    ArtifactError,
    ArtifactIntegrityError,
    Standardizer,
    TitrationModel,
    centred,
    evaluate,
    expected_calibration_error,
    fit_temperature,
    linear_from,
    macro_f1,
    nll,
    per_class_recall,
)
from policies.envelope import TitrationAction

NAMES = ("mean_sbp_7d", "adherence_14d", "hr_mean_7d", "noise")


def synthetic(n: int, seed: int, flip: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Increase above SBP 135, decrease below 100, else hold; `flip` of labels made random."""
    rng = np.random.default_rng(seed)
    sbp = rng.normal(125.0, 20.0, n)
    X = np.column_stack(
        [sbp, rng.uniform(0.5, 1.0, n), rng.normal(72.0, 10.0, n), rng.normal(0.0, 1.0, n)]
    )
    y = np.where(sbp > 135.0, 2, np.where(sbp < 100.0, 0, 1)).astype(np.int64)
    flipped = rng.random(n) < flip
    y[flipped] = rng.integers(0, 3, int(flipped.sum()))
    return X, y


@pytest.fixture(scope="module")
def trained() -> TitrationModel:
    X, y = synthetic(2000, seed=1)
    return train_sklearn_baseline(X, y, feature_names=NAMES).model


@pytest.fixture
def model(trained: TitrationModel) -> TitrationModel:
    """A fresh copy per test: calibration and metadata edits must not leak between tests."""
    return TitrationModel.from_document(trained.to_document())


def test_predict_proba_rows_sum_to_one(model: TitrationModel) -> None:
    X, _ = synthetic(500, seed=2)
    proba = model.predict_proba(X)
    assert proba.shape == (500, 3)
    assert np.all(proba >= 0.0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)


def test_predict_proba_rows_when_batched_match_each_row_scored_alone(
    model: TitrationModel,
) -> None:
    X, _ = synthetic(257, seed=6)
    X[::7, 1] = math.nan
    batched = model.predict_proba_rows(X)
    for i in range(len(X)):
        alone = model.predict_proba_rows(X[i : i + 1])[0]
        assert np.array_equal(batched[i], alone)  # bit for bit, not approximately
        assert np.array_equal(alone, model.predict_proba(X[i : i + 1])[0])
    assert model.predict_proba_rows(X[:0]).shape == (0, 3)


def test_predict_matches_most_probable_class(model: TitrationModel) -> None:
    X, _ = synthetic(300, seed=3)
    assert np.array_equal(model.predict(X), model.predict_proba(X).argmax(axis=1))


def test_baseline_sgd_reaches_high_accuracy_on_known_rule() -> None:
    X, y = synthetic(3000, seed=4)
    Xt, yt = synthetic(2000, seed=5)
    result = train_baseline(X, y, feature_names=NAMES, epochs=15, batch_size=200, lr=2.0, seed=0)
    assert evaluate(result.model, Xt, yt)["accuracy"] >= 0.97


def test_predict_proba_treats_nan_as_training_mean(model: TitrationModel) -> None:
    row = np.array([[150.0, 0.9, 80.0, 0.3]])
    missing, at_mean = row.copy(), row.copy()
    missing[0, 1] = math.nan
    at_mean[0, 1] = model.standardizer.mean[1]
    proba = model.predict_proba(missing)
    assert np.isfinite(proba).all()
    np.testing.assert_allclose(proba, model.predict_proba(at_mean), atol=1e-12)


def test_predict_proba_handles_all_features_missing(model: TitrationModel) -> None:
    proba = model.predict_proba(np.full((2, len(NAMES)), math.nan))
    # Every z is 0, so the logits are the biases: the same row twice, summing to 1.
    np.testing.assert_allclose(proba[0], proba[1])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_predict_refuses_infinite_values_and_wrong_width(model: TitrationModel) -> None:
    with pytest.raises(ValueError, match="infinite"):
        model.predict_proba(np.array([[math.inf, 0.9, 70.0, 0.0]]))
    with pytest.raises(ValueError, match="features"):
        model.predict_proba(np.zeros((1, 3)))


def test_standardizer_fit_ignores_nans_and_keeps_constant_columns_finite() -> None:
    X = np.array([[1.0, 5.0, math.nan], [3.0, 5.0, math.nan], [math.nan, 5.0, math.nan]])
    std = Standardizer.fit(X)
    assert std.mean == (2.0, 5.0, 0.0)
    assert std.scale == (1.0, 1.0, 1.0)
    z = std.transform(X)
    assert np.array_equal(z, [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])


def test_centred_parameters_leave_probabilities_unchanged(model: TitrationModel) -> None:
    X, _ = synthetic(200, seed=6)
    shifted = TitrationModel(
        NAMES, model.standardizer, linear=linear_from(model.weight + 3.0, model.bias - 1.5)
    )
    recentred = TitrationModel(
        NAMES, model.standardizer, linear=linear_from(*centred(shifted.weight, shifted.bias))
    )
    np.testing.assert_allclose(recentred.predict_proba(X), model.predict_proba(X), atol=1e-12)
    np.testing.assert_allclose(recentred.weight.sum(axis=0), 0.0, atol=1e-12)


def test_save_load_round_trip_gives_identical_probabilities(
    model: TitrationModel, tmp_path: Path
) -> None:
    model.calibrate(*synthetic(500, seed=7, flip=0.1))
    model.metadata["trainer"] = "sklearn-lbfgs"
    path = tmp_path / "model.json"
    digest = model.save(path)
    loaded = TitrationModel.load(path, digest)
    X, _ = synthetic(300, seed=8)
    assert np.array_equal(loaded.predict_proba(X), model.predict_proba(X))
    assert loaded.temperature == model.temperature
    assert loaded.feature_names == NAMES
    assert loaded.metadata["trainer"] == "sklearn-lbfgs"
    # Canonical bytes: saving the loaded model again reproduces the same digest.
    assert loaded.save(tmp_path / "again.json") == digest


def test_load_refuses_tampered_artifact(model: TitrationModel, tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    digest = model.save(path)
    doc = json.loads(path.read_bytes())
    doc["temperature"] = 0.5  # a plausible edit: still a well-formed artifact
    path.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
    with pytest.raises(ArtifactIntegrityError, match="refusing to load"):
        TitrationModel.load(path, digest)


def test_load_refuses_a_single_changed_byte(model: TitrationModel, tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    digest = model.save(path)
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError):
        TitrationModel.load(path, digest)


def test_load_refuses_malformed_expected_digest(model: TitrationModel, tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    model.save(path)
    with pytest.raises(ValueError, match="64 hexadecimal"):
        TitrationModel.load(path, "abc")


def test_load_refuses_artifact_of_wrong_format_even_with_matching_digest(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    data = b'{"format":"something-else","version":1}\n'
    path.write_bytes(data)
    with pytest.raises(ArtifactError, match="unsupported artifact"):
        TitrationModel.load(path, hashlib.sha256(data).hexdigest())


def test_calibrate_does_not_raise_nll_on_calibration_split(model: TitrationModel) -> None:
    X_cal, y_cal = synthetic(800, seed=9, flip=0.15)
    model.temperature = 1.0
    before = nll(model.predict_proba(X_cal), y_cal)
    temperature = model.calibrate(X_cal, y_cal)
    assert temperature > 1.0  # noisy labels: the fitted model is overconfident on them
    assert nll(model.predict_proba(X_cal), y_cal) <= before


def test_calibrate_lowers_ece_of_overconfident_model(model: TitrationModel) -> None:
    rng = np.random.default_rng(10)
    X_cal, _ = synthetic(4000, seed=10)
    # Labels drawn from the model's own probabilities: the model is calibrated on them, and
    # the same model with five-fold logits is far too sure of itself.
    y_cal = np.array([rng.choice(3, p=p) for p in model.predict_proba(X_cal)])
    sharp = TitrationModel(
        NAMES, model.standardizer, linear=linear_from(5.0 * model.weight, 5.0 * model.bias)
    )
    before = expected_calibration_error(sharp.predict_proba(X_cal), y_cal)
    temperature = sharp.calibrate(X_cal, y_cal)
    after = expected_calibration_error(sharp.predict_proba(X_cal), y_cal)
    assert temperature == pytest.approx(5.0, rel=0.2)
    assert after < before / 2


def test_fit_temperature_recovers_known_temperature() -> None:
    rng = np.random.default_rng(11)
    logits = rng.normal(0.0, 3.0, (20000, 3))
    scaled = np.exp(logits / 2.0)
    proba = scaled / scaled.sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=p) for p in proba])
    assert fit_temperature(logits, y) == pytest.approx(2.0, rel=0.05)


def test_fit_temperature_sharpens_separable_logits_and_keeps_one_when_flat() -> None:
    # Labels equal to the argmax: sharper always lowers the NLL. Zero logits: T cannot matter.
    logits = np.array([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
    assert fit_temperature(logits, np.array([0, 1])) < 1.0
    assert fit_temperature(np.zeros((4, 3)), np.array([0, 1, 2, 0])) == 1.0


def test_expected_calibration_error_matches_hand_computed_bins() -> None:
    proba = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.2, 0.6, 0.2], [0.2, 0.6, 0.2]])
    y = np.array([0, 1, 1, 1])
    # Bin (0.8, 0.9]: confidence 0.9, accuracy 0.5; bin (0.5, 0.6]: confidence 0.6, accuracy 1.
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6)
    assert expected_calibration_error(proba, y) == pytest.approx(expected)


def test_macro_f1_and_recall_on_known_confusion() -> None:
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    recall = per_class_recall(y_true, y_pred)
    assert recall == {
        TitrationAction.DECREASE: 0.5,
        TitrationAction.HOLD: 1.0,
        TitrationAction.INCREASE: 0.5,
    }
    # F1: decrease 2*1/(2+1+1) = 0.5, hold 2*2/(4+1+0) = 0.8, increase 2*1/(2+0+1) = 2/3.
    assert macro_f1(y_true, y_pred) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_per_class_recall_is_nan_for_absent_class() -> None:
    recall = per_class_recall(np.array([1, 1]), np.array([1, 2]))
    assert math.isnan(recall[TitrationAction.DECREASE])
    assert recall[TitrationAction.HOLD] == 0.5


def test_evaluate_reports_every_metric(model: TitrationModel) -> None:
    X, y = synthetic(1000, seed=12)
    metrics = evaluate(model, X, y)
    expected_keys = {"n", "accuracy", "macro_f1", "nll", "ece"} | {
        f"recall_{a.value}" for a in CLASSES
    }
    assert set(metrics) == expected_keys
    assert metrics["n"] == 1000
    assert metrics["accuracy"] >= 0.97
    assert 0.0 <= metrics["ece"] <= 1.0


def test_model_refuses_mismatched_names_and_bad_temperature(model: TitrationModel) -> None:
    with pytest.raises(ValueError, match="differ in length"):
        TitrationModel(NAMES[:2], model.standardizer)
    with pytest.raises(ValueError, match="unique"):
        TitrationModel(("a", "a", "b", "c"), model.standardizer)
    with pytest.raises(ValueError, match="temperature"):
        TitrationModel(NAMES, model.standardizer, temperature=0.0)
