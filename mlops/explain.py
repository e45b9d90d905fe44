"""Why the model proposed what it did: exact SHAP values and plain-language sentences.

For class k the model's logit is linear in the standardized features z:
logit_k = w_k . z + b_k. With interventional (independent-features) SHAP and a background
whose mean is E[z], the SHAP value of feature i is phi_ki = w_ki * (z_i - E[z_i]) and the base
value is w_k . E[z] + b_k. This is exact for a linear model, not an approximation, and the
values add up: base + sum_i phi_ki = logit_k (efficiency).

The background is the standardizer's centre, so E[z] = 0 and the base value is b_k. With
data-derived scales the centre is the training mean, i.e. the background is the training
data (a linear model's SHAP values depend on the background only through its mean; NaNs,
standardized to 0, keep that mean at 0). With public scales it is the public reference
patient those scales describe. A missing feature is set to the centre (see `mlops.model`),
so its SHAP value is exactly 0: missing data never "explains" a proposal.

Softmax ignores a shift shared by all three logits, so a per-class logit means something only
once that shift is fixed: every trainer in `mlops.dp` stores centred parameters (each
feature's weights and the biases sum to zero over the classes, `mlops.model.centred`), and
the values below explain those centred logits.

SHAP values are in logit (log-odds) units of the explained class, before temperature scaling
(dividing every logit by T rescales all values equally and changes no ranking or sign).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np

from mlops.model import CLASSES, FloatArray, TitrationModel, as_features, index_of
from policies.envelope import TitrationAction

Audience = Literal["clinician", "patient"]
# Below this |slope| (mmHg/day, about 3 mmHg over two weeks) a trend is called steady.
STEADY_SLOPE: Final = 0.2
# Adherence the protocol requires before changing a dose (loops.protocol.MIN_ADHERENCE).
REGULAR_ADHERENCE: Final = 0.8
_AGE_BANDS: Final = ("under 40", "40-49", "50-59", "60-69", "70-79", "80 or over")


def _mmhg(v: float) -> str:
    return f"{v:.0f} mmHg"


def _slope(v: float) -> str:
    return f"{v:+.1f} mmHg/day"


def _percent(v: float) -> str:
    return f"{100 * v:.0f}%"


def _count(v: float) -> str:
    return f"{v:.0f}"


def _per_min(v: float) -> str:
    return f"{v:.0f}/min"


def _steps(v: float) -> str:
    return f"{v:,.0f} steps/day"


def _days(v: float) -> str:
    return f"{v:.0f} days"


def _flag(v: float) -> str:
    return "yes" if v >= 0.5 else "no"


def _ladder(v: float) -> str:
    return f"{v:.2f} (0 lowest step, 1 top)"


def _age_band(v: float) -> str:
    band = round(v)
    return f"{_AGE_BANDS[band]} years" if 0 <= band < len(_AGE_BANDS) else f"{v:g}"


def _plain(v: float) -> str:
    return f"{v:.3g}"


@dataclass(frozen=True)
class FeatureInfo:
    """How to name and print one feature: clinician label, value format, patient phrase."""

    label: str
    fmt: Callable[[float], str]
    # What the patient reads, from the raw value; None: only the clinician text names it.
    patient: Callable[[float], str] | None = None


def _bp(what: str, when: str) -> Callable[[float], str]:
    return lambda v: f"your home blood pressure ({what} number) has averaged {v:.0f} {when}"


def _trend(what: str) -> Callable[[float], str]:
    def phrase(v: float) -> str:
        if abs(v) < STEADY_SLOPE:
            return f"{what} has been steady over the last two weeks"
        return f"{what} has been {'rising' if v > 0 else 'falling'} over the last two weeks"

    return phrase


def _adherence(v: float) -> str:
    if v >= REGULAR_ADHERENCE:
        return f"you have taken your doses regularly ({_percent(v)} of them)"
    return f"some doses have been missed (you took {_percent(v)} of them)"


def _has(condition: str) -> Callable[[float], str]:
    return lambda v: f"you {'have' if v >= 0.5 else 'do not have'} {condition}"


_SBP_7D = FeatureInfo("7-day home SBP mean", _mmhg, _bp("top", "this week"))
_DBP_7D = FeatureInfo("7-day home DBP mean", _mmhg, _bp("bottom", "this week"))
_SBP_AM = FeatureInfo("7-day morning home SBP mean", _mmhg, _bp("top", "in the mornings"))
_SBP_SD = FeatureInfo(
    "14-day home SBP variability (SD)",
    _mmhg,
    lambda v: f"your top-number readings have varied by about {v:.0f} from reading to reading",
)
_SBP_SLOPE = FeatureInfo(
    "14-day home SBP trend", _slope, _trend("your home blood pressure (top number)")
)
_AT_TARGET = FeatureInfo(
    "share of 14-day home readings at target",
    _percent,
    lambda v: f"{_percent(v)} of your home readings in the last two weeks were at your target",
)
_CUFFLESS = FeatureInfo(
    "7-day cuffless SBP mean (trend only)",
    _mmhg,
    lambda v: f"your wearable's blood pressure estimate has averaged {v:.0f} this week",
)
_HR = FeatureInfo(
    "7-day mean heart rate", _per_min, lambda v: f"your heart rate has averaged {v:.0f} a minute"
)
_STEPS = FeatureInfo(
    "7-day mean daily steps", _steps, lambda v: f"you have walked about {v:,.0f} steps a day"
)
_SEX = FeatureInfo("sex", _plain)

# Names from mlops.features, plus the short names of the first feature list, which map to
# the same labels. Unknown names fall back to the raw name (see `feature_info`).
FEATURES: Final[Mapping[str, FeatureInfo]] = {
    "cuff_sbp_mean_7d": _SBP_7D,
    "mean_sbp_7d": _SBP_7D,
    "cuff_dbp_mean_7d": _DBP_7D,
    "mean_dbp_7d": _DBP_7D,
    "cuff_sbp_mean_14d": FeatureInfo(
        "14-day home SBP mean", _mmhg, _bp("top", "over the last two weeks")
    ),
    "cuff_dbp_mean_14d": FeatureInfo(
        "14-day home DBP mean", _mmhg, _bp("bottom", "over the last two weeks")
    ),
    "cuff_sbp_mean_am_7d": _SBP_AM,
    "mean_sbp_am_7d": _SBP_AM,
    "cuff_dbp_mean_am_7d": FeatureInfo(
        "7-day morning home DBP mean", _mmhg, _bp("bottom", "in the mornings")
    ),
    "cuff_sbp_mean_pm_7d": FeatureInfo(
        "7-day afternoon/evening home SBP mean", _mmhg, _bp("top", "later in the day")
    ),
    "cuff_dbp_mean_pm_7d": FeatureInfo(
        "7-day afternoon/evening home DBP mean", _mmhg, _bp("bottom", "later in the day")
    ),
    "cuff_sbp_mean_3d": FeatureInfo(
        "3-day home SBP mean", _mmhg, _bp("top", "over the last three days")
    ),
    "cuff_sbp_min_3d": FeatureInfo(
        "3-day lowest home SBP",
        _mmhg,
        lambda v: f"your lowest top-number reading in the last three days was {v:.0f}",
    ),
    "cuff_sbp_sd_14d": _SBP_SD,
    "sd_sbp_14d": _SBP_SD,
    "cuff_sbp_slope_14d": _SBP_SLOPE,
    "slope_sbp_14d": _SBP_SLOPE,
    "cuff_at_target_share_14d": _AT_TARGET,
    "share_at_target_14d": _AT_TARGET,
    "cuff_readings_7d": FeatureInfo(
        "validated-cuff readings in 7 days",
        _count,
        lambda v: f"you took {v:.0f} home readings this week",
    ),
    "cuff_days_7d": FeatureInfo(
        "days with a validated-cuff reading in 7 days",
        _count,
        lambda v: f"you measured on {v:.0f} days this week",
    ),
    "cuffless_sbp_mean_7d": _CUFFLESS,
    "cuffless_sbp_slope_14d": FeatureInfo(
        "14-day cuffless SBP trend (trend only)",
        _slope,
        _trend("your wearable's blood pressure estimate"),
    ),
    "heart_rate_mean_7d": _HR,
    "hr_mean_7d": _HR,
    "steps_daily_mean_7d": _STEPS,
    "steps_mean_7d": _STEPS,
    "adherence_14d": FeatureInfo("adherence", _percent, _adherence),
    "hypotension_symptoms_3d": FeatureInfo(
        "dizziness or fainting reported in 3 days",
        _flag,
        lambda v: (
            "you reported feeling dizzy or faint in the last three days"
            if v >= 0.5
            else "you have not reported feeling dizzy or faint in the last three days"
        ),
    ),
    "symptom_reports_14d": FeatureInfo(
        "symptom reports in 14 days",
        _count,
        lambda v: (
            "you have not reported any symptoms in the last two weeks"
            if v < 0.5
            else f"you reported symptoms {v:.0f} time{'s' if round(v) != 1 else ''} "
            "in the last two weeks"
        ),
    ),
    "ladder_position": FeatureInfo(
        "dose-ladder position",
        _ladder,
        lambda v: "the dose step you are on now was taken into account",
    ),
    "days_since_change": FeatureInfo(
        "days since last dose change",
        _days,
        lambda v: (
            f"your dose last changed {v:.0f} days ago"
            if v < 365
            else "your dose has not changed for a year or more"
        ),
    ),
    "never_changed": FeatureInfo(
        "dose never changed",
        _flag,
        lambda v: (
            "your dose has not been changed yet"
            if v >= 0.5
            else "your dose has been changed before"
        ),
    ),
    "age_band": FeatureInfo(
        "age band", _age_band, lambda v: "your age group was taken into account"
    ),
    "sex": _SEX,
    "sex_female": FeatureInfo("female sex", _flag),
    "sex_male": FeatureInfo("male sex", _flag),
    "diabetes": FeatureInfo("diabetes", _flag, _has("diabetes")),
    "ckd": FeatureInfo("chronic kidney disease", _flag, _has("kidney disease")),
}
# (systolic, diastolic) pairs that the patient text states together, as "146/88".
_BP_PAIRS: Final[Mapping[str, tuple[str, str]]] = {
    "cuff_sbp_mean_7d": ("cuff_dbp_mean_7d", "this week"),
    "mean_sbp_7d": ("mean_dbp_7d", "this week"),
    "cuff_sbp_mean_14d": ("cuff_dbp_mean_14d", "over the last two weeks"),
    "cuff_sbp_mean_am_7d": ("cuff_dbp_mean_am_7d", "in the mornings"),
    "cuff_sbp_mean_pm_7d": ("cuff_dbp_mean_pm_7d", "later in the day"),
}
_MISSING_SUFFIX: Final = "_missing"


def feature_info(name: str) -> FeatureInfo:
    """The label and formats for a feature; unknown names fall back to the raw name."""
    known = FEATURES.get(name)
    if known is not None:
        return known
    if name.endswith(_MISSING_SUFFIX):
        base = feature_info(name.removesuffix(_MISSING_SUFFIX))
        return FeatureInfo(
            f"{base.label} missing",
            _flag,
            lambda v: "some of your recent measurements were not available" if v >= 0.5 else "",
        )
    return FeatureInfo(name, _plain)


@dataclass(frozen=True)
class Factor:
    """One feature's part in a proposal: its raw value and SHAP value (logit units)."""

    feature: str
    label: str
    value: float
    contribution: float

    @property
    def supports(self) -> bool:
        """True when the feature pushes towards the explained action."""
        return self.contribution > 0


def _row(model: TitrationModel, x: np.ndarray) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != (model.n_features,):
        raise ValueError(f"x must have shape ({model.n_features},), got {arr.shape}")
    return arr[None, :]


def _class_index(model: TitrationModel, row: np.ndarray, action: TitrationAction | None) -> int:
    return int(model.predict(row)[0]) if action is None else index_of(action)


def feature_values(model: TitrationModel, x: np.ndarray) -> dict[str, float]:
    """One row's raw values by feature name, as `top_factors` takes them."""
    row = _row(model, x)[0]
    return {name: float(v) for name, v in zip(model.feature_names, row, strict=True)}


def base_value(model: TitrationModel, action: TitrationAction) -> float:
    """The SHAP base value of an action's logit: its value at the background mean, b_k."""
    # E[z] = 0 by construction of the background (module docstring), so w_k . E[z] vanishes.
    return float(model.bias[index_of(action)])


def shap_values(
    model: TitrationModel, x: np.ndarray, action: TitrationAction | None = None
) -> dict[str, float]:
    """Exact SHAP values of one row's logit for `action` (default: the predicted action)."""
    row = _row(model, x)
    k = _class_index(model, row, action)
    (phi,) = shap_matrix(model, row, [CLASSES[k]]).tolist()
    return dict(zip(model.feature_names, phi, strict=True))


def shap_matrix(
    model: TitrationModel, X: np.ndarray, actions: Sequence[TitrationAction]
) -> FloatArray:
    """Exact SHAP values [n, d] of each row's logit for its action, in one pass.

    Element-wise (phi = w[k] * z), so a row's values do not depend on the other rows.
    """
    arr = as_features(X, model.n_features)
    if len(actions) != arr.shape[0]:
        raise ValueError(f"{arr.shape[0]} rows but {len(actions)} actions")
    k = np.array([index_of(a) for a in actions], dtype=np.int64)
    return np.asarray(model.weight[k] * model.standardize(arr))


def top_factors(
    phi: Mapping[str, float], feature_values: Mapping[str, float], k: int = 3
) -> list[Factor]:
    """The k features with the largest |SHAP value|; features contributing 0 are left out."""
    if k < 0:
        raise ValueError("k must not be negative")
    ranked = sorted(
        ((name, v) for name, v in phi.items() if v != 0.0),
        key=lambda item: (-abs(item[1]), item[0]),
    )
    return [
        Factor(name, feature_info(name).label, float(feature_values.get(name, math.nan)), v)
        for name, v in ranked[:k]
    ]


_CLINICIAN_PROPOSAL: Final = {
    TitrationAction.INCREASE: ("Proposed: increase one step.", "an increase"),
    TitrationAction.DECREASE: ("Proposed: decrease one step.", "a decrease"),
    TitrationAction.HOLD: ("Proposed: hold the current dose.", "holding"),
}
_PATIENT_PROPOSAL: Final = {
    TitrationAction.INCREASE: "a step up in your dose is suggested",
    TitrationAction.DECREASE: "a step down in your dose is suggested",
    TitrationAction.HOLD: "staying on your current dose is suggested",
}


def _value_text(factor: Factor) -> str:
    if math.isnan(factor.value):
        return "missing"
    return feature_info(factor.feature).fmt(factor.value)


def _clinician(factors: Sequence[Factor], action: TitrationAction) -> str:
    opening, case = _CLINICIAN_PROPOSAL[action]
    if not factors:
        return f"{opening} No single factor stood out."
    parts = []
    for i, f in enumerate(factors):
        verb = "raises" if f.supports else "lowers"
        # The first factor says what "raises" refers to; the rest keep it short.
        effect = f"{verb} the case for {case}" if i == 0 else verb
        # Yes/no features read as "diabetes: yes"; measurements as "7-day ... 146 mmHg".
        sep = ": " if feature_info(f.feature).fmt is _flag else " "
        parts.append(f"{f.label}{sep}{_value_text(f)} ({effect})")
    return f"{opening} Main factors: {', '.join(parts)}."


def _join(clauses: Sequence[str]) -> str:
    if len(clauses) <= 1:
        return "".join(clauses)
    return f"{', '.join(clauses[:-1])} and {clauses[-1]}"


def _patient_clauses(factors: Sequence[Factor]) -> list[tuple[str, bool]]:
    """(clause, supports) per factor in order; an SBP/DBP pair becomes one "146/88" clause."""
    by_name = {f.feature: f for f in factors if not math.isnan(f.value)}
    paired = {
        sbp: by_name[dbp]
        for sbp, (dbp, _) in _BP_PAIRS.items()
        if sbp in by_name and dbp in by_name
    }
    merged = {f.feature for f in paired.values()}
    clauses: list[tuple[str, bool]] = []
    for f in factors:
        if f.feature not in by_name or f.feature in merged:
            continue
        partner = paired.get(f.feature)
        if partner is not None:
            # The pair is stated where the systolic factor ranks, on the systolic's side.
            when = _BP_PAIRS[f.feature][1]
            text = f"your home blood pressure has averaged {f.value:.0f}/{partner.value:.0f} {when}"
        else:
            phrase = feature_info(f.feature).patient
            text = phrase(f.value) if phrase else ""
        if text:
            clauses.append((text, f.supports))
    return clauses


def _patient(factors: Sequence[Factor], action: TitrationAction) -> str:
    proposal = _PATIENT_PROPOSAL[action]
    clauses = _patient_clauses(factors)
    support = [text for text, supports in clauses if supports]
    against = [text for text, supports in clauses if not supports]
    text = f"{_join(support)}, so {proposal}." if support else f"{proposal}."
    text = text[0].upper() + text[1:]
    if against:
        text += f" On the other hand, {_join(against)}."
    return text


def describe(
    factors: Sequence[Factor], action: TitrationAction, audience: Audience = "clinician"
) -> str:
    """A plain-language sentence or two on the proposal and its main factors."""
    if audience == "clinician":
        return _clinician(factors, action)
    if audience == "patient":
        return _patient(factors, action)
    raise ValueError(f"unknown audience {audience!r}")
