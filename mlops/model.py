"""The titration model: multinomial logistic regression over {decrease, hold, increase}.

One `torch.nn.Linear(d, 3)` on standardized inputs, then temperature-scaled softmax.

Missing values, one rule: a NaN feature is replaced by the standardizer's centre, i.e. it
becomes 0 after standardization. With data-derived scales the centre is the training mean,
so a missing value contributes nothing to any logit and its SHAP value is exactly 0 (see
`mlops.explain`); the `<name>_missing` indicators of the feature vector let the model learn
what missingness itself says. Infinite values are not "missing": they are refused.

Artifacts are one canonical JSON file (sorted keys, floats written with `repr`, which
round-trips float64 exactly). There is no pickle and nothing executable in it, the same
model always gives the same bytes and so the same SHA-256, and `load` refuses any file whose
SHA-256 is not the one the caller expected: artifacts are immutable and checked on load.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from policies.envelope import TitrationAction

# Output index -> action; the order of the model's three logits.
CLASSES: Final[tuple[TitrationAction, ...]] = (
    TitrationAction.DECREASE,
    TitrationAction.HOLD,
    TitrationAction.INCREASE,
)
N_CLASSES: Final = len(CLASSES)
ARTIFACT_FORMAT: Final = "clinaiops.titration-model"
ARTIFACT_VERSION: Final = 1
ECE_BINS: Final = 10
# Temperature search bounds, as inverse temperature beta = 1/T (see `fit_temperature`).
_BETA_MIN: Final = 0.02
_BETA_MAX: Final = 50.0
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
MetaValue = str | int | float | bool


class ArtifactError(ValueError):
    """A model artifact that must not be used."""


class ArtifactIntegrityError(ArtifactError):
    """The artifact's SHA-256 is not the expected one (tampered, corrupted or the wrong file)."""


def action_of(index: int) -> TitrationAction:
    """The action for an output index (0 decrease, 1 hold, 2 increase)."""
    return CLASSES[index]


def index_of(action: TitrationAction) -> int:
    """The output index of an action."""
    return CLASSES.index(action)


def as_features(X: np.ndarray, d: int | None = None) -> FloatArray:
    """X as float64 [n, d]; NaN (missing) allowed, infinities refused."""
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"X must be 2-D [n, d], got shape {arr.shape}")
    if d is not None and arr.shape[1] != d:
        raise ValueError(f"X has {arr.shape[1]} features, the model expects {d}")
    if np.isinf(arr).any():
        raise ValueError("X holds infinite values; only NaN means missing")
    return arr


def as_labels(y: np.ndarray, n: int) -> IntArray:
    """y as int64 [n] class indices in 0..2."""
    arr = np.asarray(y)
    if arr.shape != (n,):
        raise ValueError(f"y must have shape ({n},), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError("y must hold integer class indices")
    labels = arr.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise ValueError(f"y must hold class indices in 0..{N_CLASSES - 1}")
    return labels


@dataclass(frozen=True)
class Standardizer:
    """Per-feature centre and scale: z = (x - centre) / scale, and a NaN x gives z = 0."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.scale):
            raise ValueError("mean and scale differ in length")
        if not all(math.isfinite(m) for m in self.mean):
            raise ValueError("standardizer means must be finite")
        if not all(math.isfinite(s) and s > 0 for s in self.scale):
            raise ValueError("standardizer scales must be finite and positive")

    @classmethod
    def fit(cls, X: np.ndarray) -> Standardizer:
        """Centre and scale from data, ignoring NaNs; constant or all-NaN columns get scale 1."""
        arr = as_features(X)
        mean = np.zeros(arr.shape[1])
        scale = np.ones(arr.shape[1])
        for j in range(arr.shape[1]):
            col = arr[:, j][~np.isnan(arr[:, j])]
            if col.size:
                mean[j] = float(col.mean())
                sd = float(col.std())
                # A constant column carries no signal; scale 1 keeps z finite (all zeros).
                scale[j] = sd if sd > 1e-12 else 1.0
        return cls(tuple(float(m) for m in mean), tuple(float(s) for s in scale))

    def transform(self, X: np.ndarray) -> FloatArray:
        """Standardize; NaN (missing) becomes 0, the centre."""
        arr = as_features(X, len(self.mean))
        z = (arr - np.asarray(self.mean)) / np.asarray(self.scale)
        return np.where(np.isnan(z), 0.0, z)


class TitrationModel:
    """Standardize, one linear layer to three logits, temperature-scaled softmax."""

    def __init__(
        self,
        feature_names: Sequence[str],
        standardizer: Standardizer,
        *,
        linear: nn.Linear | None = None,
        temperature: float = 1.0,
        metadata: Mapping[str, MetaValue] | None = None,
    ) -> None:
        names = tuple(feature_names)
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique")
        if len(names) != len(standardizer.mean):
            raise ValueError("feature_names and standardizer differ in length")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError("temperature must be finite and positive")
        self.feature_names: tuple[str, ...] = names
        self.standardizer = standardizer
        if linear is None:
            # Zero start: the problem is convex, and no global torch RNG state is consumed.
            linear = nn.Linear(len(names), N_CLASSES, dtype=torch.float64)
            with torch.no_grad():
                linear.weight.zero_()
                linear.bias.zero_()
        if linear.in_features != len(names) or linear.out_features != N_CLASSES:
            raise ValueError("linear layer shape does not match the features and classes")
        self.linear = linear.to(torch.float64)
        self.temperature = float(temperature)
        self.metadata: dict[str, MetaValue] = dict(metadata or {})

    @property
    def n_features(self) -> int:
        """The number of input features d."""
        return len(self.feature_names)

    @property
    def weight(self) -> FloatArray:
        """The weights [3, d] over standardized features, as float64 numpy."""
        return self.linear.weight.detach().cpu().numpy().astype(np.float64, copy=True)

    @property
    def bias(self) -> FloatArray:
        """The biases [3], as float64 numpy."""
        return self.linear.bias.detach().cpu().numpy().astype(np.float64, copy=True)

    def standardize(self, X: np.ndarray) -> FloatArray:
        """The standardized inputs z the linear layer sees (NaN -> 0)."""
        return self.standardizer.transform(X)

    def logits(self, X: np.ndarray) -> FloatArray:
        """Uncalibrated logits [n, 3] (temperature not applied)."""
        z = self.standardize(X)
        return z @ self.weight.T + self.bias

    def predict_proba(self, X: np.ndarray) -> FloatArray:
        """Calibrated class probabilities [n, 3]: softmax(logits / temperature)."""
        return _softmax(self.logits(X) / self.temperature)

    def row_logits(self, X: np.ndarray) -> FloatArray:
        """Uncalibrated logits [n, 3], each row computed exactly as if scored alone.

        A matrix product over many rows (`logits`) lets BLAS block the sums differently for
        a different number of rows, which moves the last bits. Serving needs a row's logits to
        be bit-for-bit the same alone or in a batch, so that a daily batch decides exactly as
        a single evaluation would (and stores the same probabilities as before batching): the
        inputs are standardized together, then each row goes through the same one-row product.
        """
        z = self.standardize(X)
        w_t, bias = self.weight.T, self.bias
        if z.shape[0] == 0:
            return np.empty((0, N_CLASSES), dtype=np.float64)
        return np.concatenate([z[i : i + 1] @ w_t + bias for i in range(z.shape[0])])

    def predict_proba_rows(self, X: np.ndarray) -> FloatArray:
        """Calibrated class probabilities [n, 3] from `row_logits` (row-independent)."""
        return _softmax(self.row_logits(X) / self.temperature)

    def predict(self, X: np.ndarray) -> IntArray:
        """The most probable class index per row."""
        return np.asarray(np.argmax(self.logits(X), axis=1), dtype=np.int64)

    def calibrate(self, X_cal: np.ndarray, y_cal: np.ndarray) -> float:
        """Fit and store the temperature on a held-out calibration split; return it."""
        logits = self.logits(X_cal)
        self.temperature = fit_temperature(logits, as_labels(y_cal, logits.shape[0]))
        return self.temperature

    def to_document(self) -> dict[str, object]:
        """Everything the artifact stores, as plain JSON-ready values."""
        weight, bias = self.weight, self.bias
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise ArtifactError("refusing to save a model with non-finite parameters")
        return {
            "format": ARTIFACT_FORMAT,
            "version": ARTIFACT_VERSION,
            "classes": [a.value for a in CLASSES],
            "feature_names": list(self.feature_names),
            "standardizer": {
                "mean": list(self.standardizer.mean),
                "scale": list(self.standardizer.scale),
            },
            "weight": [[float(v) for v in row] for row in weight],
            "bias": [float(v) for v in bias],
            "temperature": self.temperature,
            "metadata": dict(sorted(self.metadata.items())),
        }

    def save(self, path: str | Path) -> str:
        """Write the artifact (canonical JSON) and return its SHA-256 hex digest."""
        data = _canonical_json(self.to_document())
        target = Path(path)
        # Write then rename, so a reader never sees a half-written artifact.
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def load(cls, path: str | Path, expected_sha256: str) -> TitrationModel:
        """Read an artifact, refusing it unless its SHA-256 equals `expected_sha256`."""
        expected = expected_sha256.strip().lower()
        if not _SHA256_HEX.fullmatch(expected):
            raise ValueError("expected_sha256 must be 64 hexadecimal characters")
        data = Path(path).read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if not hmac.compare_digest(actual, expected):
            raise ArtifactIntegrityError(
                f"model artifact {path} has SHA-256 {actual}, expected {expected}: refusing to load"
            )
        try:
            doc = json.loads(data, parse_constant=_refuse_constant)
        except ValueError as exc:  # JSONDecodeError and the refused NaN/Infinity alike
            raise ArtifactError(f"model artifact {path} is not valid JSON: {exc}") from exc
        return cls.from_document(doc)

    @classmethod
    def from_document(cls, doc: object) -> TitrationModel:
        """Rebuild a model from `to_document` output, validating every field."""
        try:
            return cls._from_document(doc)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ArtifactError):
                raise
            raise ArtifactError(f"malformed model artifact: {exc}") from exc

    @classmethod
    def _from_document(cls, doc: object) -> TitrationModel:
        if not isinstance(doc, dict):
            raise TypeError("artifact is not a JSON object")
        if doc["format"] != ARTIFACT_FORMAT or doc["version"] != ARTIFACT_VERSION:
            raise ValueError(f"unsupported artifact {doc['format']!r} v{doc['version']!r}")
        if doc["classes"] != [a.value for a in CLASSES]:
            raise ValueError("artifact class order differs from this code's")
        names = tuple(str(n) for n in doc["feature_names"])
        std = doc["standardizer"]
        standardizer = Standardizer(
            tuple(float(v) for v in std["mean"]), tuple(float(v) for v in std["scale"])
        )
        weight = np.asarray(doc["weight"], dtype=np.float64)
        bias = np.asarray(doc["bias"], dtype=np.float64)
        if weight.shape != (N_CLASSES, len(names)) or bias.shape != (N_CLASSES,):
            raise ValueError("parameter shapes do not match the feature names")
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise ValueError("non-finite parameters")
        metadata = doc["metadata"]
        if not isinstance(metadata, dict) or not all(
            isinstance(v, str | int | float | bool) for v in metadata.values()
        ):
            raise TypeError("metadata must map names to scalars")
        return cls(
            names,
            standardizer,
            linear=linear_from(weight, bias),
            temperature=float(doc["temperature"]),
            metadata=metadata,
        )


def centred(weight: np.ndarray, bias: np.ndarray) -> tuple[FloatArray, FloatArray]:
    """Weights and biases shifted to sum to zero over the classes; probabilities unchanged.

    Softmax ignores a shift shared by all logits, so without this the per-class logits (and
    their SHAP values) are not identifiable: DP noise, for one, adds such a shift that moves
    no probability but would show up in every class's explanation.
    """
    w = np.asarray(weight, dtype=np.float64)
    b = np.asarray(bias, dtype=np.float64)
    return w - w.mean(axis=0, keepdims=True), b - b.mean()


def linear_from(weight: np.ndarray, bias: np.ndarray) -> nn.Linear:
    """A float64 `nn.Linear` holding the given weight [3, d] and bias [3]."""
    w = np.asarray(weight, dtype=np.float64)
    layer = nn.Linear(w.shape[1], w.shape[0], dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w.copy()))
        layer.bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float64).copy()))
    return layer


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not allowed in an artifact")


def _canonical_json(doc: Mapping[str, object]) -> bytes:
    # allow_nan=False: NaN/inf are not JSON and would make the artifact unreadable elsewhere.
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8") + b"\n"


def _softmax(logits: FloatArray) -> FloatArray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)


def _nll_at(logits: FloatArray, y: IntArray, beta: float) -> float:
    scaled = logits * beta
    m = scaled.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(scaled - m).sum(axis=1, keepdims=True)))[:, 0]
    return float(np.mean(lse - scaled[np.arange(y.size), y]))


def fit_temperature(logits: np.ndarray, y: np.ndarray, *, tol: float = 1e-6) -> float:
    """The temperature T minimizing the NLL of softmax(logits / T) on (logits, y).

    The NLL is convex in beta = 1/T (a log-sum-exp of functions linear in beta minus a linear
    term), so a golden-section search on beta finds its minimum; T = 1 is kept unless the
    search found a strictly lower NLL, so calibration never raises the NLL it was fitted on.
    """
    z = np.asarray(logits, dtype=np.float64)
    labels = as_labels(y, z.shape[0])
    if labels.size == 0:
        raise ValueError("cannot fit a temperature on an empty calibration split")
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    lo, hi = _BETA_MIN, _BETA_MAX
    a, b = hi - inv_phi * (hi - lo), lo + inv_phi * (hi - lo)
    fa, fb = _nll_at(z, labels, a), _nll_at(z, labels, b)
    while hi - lo > tol:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - inv_phi * (hi - lo)
            fa = _nll_at(z, labels, a)
        else:
            lo, a, fa = a, b, fb
            b = lo + inv_phi * (hi - lo)
            fb = _nll_at(z, labels, b)
    beta = (lo + hi) / 2.0
    if _nll_at(z, labels, beta) < _nll_at(z, labels, 1.0):
        return 1.0 / beta
    return 1.0


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of rows predicted correctly."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.size == 0:
        raise ValueError("no rows to score")
    return float(np.mean(t == p))


def per_class_recall(y_true: np.ndarray, y_pred: np.ndarray) -> dict[TitrationAction, float]:
    """Recall per action; NaN for an action absent from y_true (recall is undefined)."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    out: dict[TitrationAction, float] = {}
    for k, action in enumerate(CLASSES):
        support = int(np.sum(t == k))
        out[action] = float(np.sum((t == k) & (p == k)) / support) if support else math.nan
    return out


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean F1 over the classes present in y_true or y_pred."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    scores: list[float] = []
    for k in range(N_CLASSES):
        tp = int(np.sum((t == k) & (p == k)))
        fp = int(np.sum((t != k) & (p == k)))
        fn = int(np.sum((t == k) & (p != k)))
        if tp + fp + fn == 0:
            continue  # class absent from both: F1 undefined, left out of the mean
        scores.append(2.0 * tp / (2.0 * tp + fp + fn))
    if not scores:
        raise ValueError("no rows to score")
    return float(np.mean(scores))


def nll(proba: np.ndarray, y_true: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes (probabilities floored at 1e-15)."""
    pr = np.asarray(proba, dtype=np.float64)
    t = as_labels(y_true, pr.shape[0])
    picked = np.clip(pr[np.arange(t.size), t], 1e-15, 1.0)
    return float(-np.mean(np.log(picked)))


def expected_calibration_error(
    proba: np.ndarray, y_true: np.ndarray, *, bins: int = ECE_BINS
) -> float:
    """ECE over max-probability confidence in `bins` equal-width bins (0, 1/bins], ..."""
    pr = np.asarray(proba, dtype=np.float64)
    t = as_labels(y_true, pr.shape[0])
    if t.size == 0:
        raise ValueError("no rows to score")
    conf = pr.max(axis=1)
    correct = (pr.argmax(axis=1) == t).astype(np.float64)
    # Bin b holds (b/bins, (b+1)/bins]; confidence 0 (impossible for a softmax) joins bin 0.
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = idx == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def evaluate(model: TitrationModel, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1, per-class recall, NLL and ECE of the calibrated model on (X, y)."""
    proba = model.predict_proba(X)
    labels = as_labels(y, proba.shape[0])
    pred = np.asarray(proba.argmax(axis=1), dtype=np.int64)
    out = {
        "n": float(labels.size),
        "accuracy": accuracy(labels, pred),
        "macro_f1": macro_f1(labels, pred),
        "nll": nll(proba, labels),
        "ece": expected_calibration_error(proba, labels),
    }
    for action, recall in per_class_recall(labels, pred).items():
        out[f"recall_{action.value}"] = recall
    return out
