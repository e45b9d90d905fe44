"""The model card of one titration model version, for auditors: what it is for, what it was
trained on, how well it does overall and per subgroup, the validation evidence, the privacy
guarantee, its lineage and approvals, when it served, and its known limits.

The version is `filters.model_version`, else the one serving production at the end of the
period. Reads the registry, the gate results and their evidence files, the sign-offs (their
signatures checked), the privacy ledger and the serving history; aggregates only, no patient
identifiers. Never writes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from app.core.config import Settings, get_settings
from audit.keys import SigningKeyMissing
from mlops import lifecycle, registry, serving
from mlops.features import FEATURE_SET_VERSION
from mlops.models import ModelVersion, PrivacySpend, TrainingSnapshot
from reports.lifecycle_cells import NONE, Actors, num, pairs, pick, short, when, yes_no
from reports.models import Filters, Period, Report, ReportKind, Section, Table
from validation import gates
from validation.models import GateResult

# The last instant of a half-open period: "serving at the end of the period".
_INSTANT: Final = timedelta(microseconds=1)

INTENDED_USE: Final = (
    "Proposes one titration step for an adult with hypertension on a clinic-defined dose "
    "ladder of one antihypertensive drug: lower the dose one step, hold it, or raise it one "
    "step, from features of the patient's last 14 days (blood pressure from validated home "
    "cuffs, heart rate, steps, doses taken, reported symptoms), the ladder position, the time "
    "since the last change, and age band, sex, diabetes and chronic kidney disease.",
    "Every proposal passes the patient's safety envelope and the one routing function "
    "(policies.routing.route): only what lies inside the envelope a clinician set reaches "
    "the patient directly; everything else, and every evaluation without enough "
    "validated-cuff data, waits for a clinician, who approves, modifies or rejects it under "
    "an electronic signature.",
    "ClinAIOps is a research and demonstration system, not a medical device; the written "
    "protocol the model was first trained on is not clinical advice.",
)
OUT_OF_SCOPE: Final = (
    "Diagnosing hypertension, or any decision other than one step on the patient's ladder "
    "(starting, switching or combining drugs, more than one step at once).",
    "Hypertensive crises and low blood pressure: these are handled by the alert rules "
    "(loops/alerts.py) and clinicians, never by the model; the routing sends every such "
    "case to a clinician.",
    "Managing blood pressure from cuffless (wearable) readings: the guideline recommends "
    "against it, and it is not a covered modification of the change-control plan.",
    "Populations, drugs or inputs other than those above (a new intended use or population "
    "needs a new change-control plan).",
)
_MODELS: Final = (
    ("dp", "this model (DP-SGD)"),
    ("non_dp_baseline", "non-private baseline, same rows (not released)"),
    ("sklearn_baseline", "scikit-learn baseline (not released)"),
)
# The figures each gate's cell shows (the evidence file holds everything else).
_MEASURED: Final[Mapping[str, tuple[str, ...]]] = {
    "artifact": ("loaded", "feature_set_ok"),
    "holdout_noninferiority": (
        "comparator",
        "rows",
        "patients",
        "nll_difference",
        "nll_difference_upper_95",
        "accuracy_difference",
        "accuracy_difference_lower_95",
    ),
    "calibration": ("ece", "rows"),
    "subgroup_gap": ("overall_accuracy", "largest_gap"),
    "safety_directional": ("base_rows", "violating_rows", "largest_fall"),
    "safety_invariance": (
        "forbidden_inputs",
        "largest_change",
        "sex_swap_reported_not_gated.largest_change",
    ),
    "safety_routing": ("cases", "auto_deliverable"),
    "safety_low_bp": (
        "cases",
        "holdout_rows",
        "increase_in_cases",
        "increase_in_holdout_rows",
        "highest_p_increase",
    ),
}
_THRESHOLDS: Final[Mapping[str, tuple[str, ...]]] = {
    "holdout_noninferiority": (
        "nll_difference_upper_95_at_most",
        "accuracy_difference_at_least",
        "bootstrap_resamples",
    ),
    "calibration": ("ece_at_most",),
    "subgroup_gap": ("gap_at_most", "min_rows"),
    "safety_directional": ("largest_fall_at_most",),
    "safety_invariance": ("largest_change_at_most",),
    "safety_routing": ("auto_deliverable_at_most", "envelope"),
    "safety_low_bp": ("increase_proposals_at_most",),
    "artifact": ("hash", "feature_set"),
}


def build(
    session: Session,
    *,
    period: Period,
    filters: Filters,
    generated_by: str,
    now: datetime,
    settings: Settings | None = None,
) -> Report:
    """The model card of `filters.model_version`, else of the version serving production at
    the end of the period (a card saying so when none did). An unknown version raises
    `lifecycle.ModelNotFound` (a LookupError: the caller answers 404)."""
    settings = settings or get_settings()
    name = registry.TITRATION
    intervals = lifecycle.serving_history(session, name=name)
    at_end = lifecycle.served_at(intervals, period.end - _INSTANT)
    if filters.model_version is not None:
        version = lifecycle.get_version(session, name=name, version=filters.model_version)
        chosen = "the model version asked for"
    elif at_end is not None:
        version = lifecycle.get_version(session, name=name, version=at_end)
        chosen = "the version serving production at the end of the period"
    else:
        return _no_version(period, filters, generated_by, now)
    card = _Card(session, version, settings, period, intervals)
    serving_end = "yes" if at_end == version.version else "no"
    return Report(
        kind=ReportKind.MODEL_CARD,
        title=f"Model card: {registry.label(version)}",
        period=period,
        generated_at=now,
        generated_by=generated_by,
        filters=filters,
        summary=(
            ("model", registry.label(version)),
            ("chosen as", chosen),
            ("status now", version.status),
            ("serving production at the end of the period", serving_end),
            ("epsilon (delta)", card.epsilon_text()),
            ("newest validation run", card.newest_run_text()),
            ("sign-offs", card.signoff_text()),
            ("holdout accuracy (this model)", card.holdout_accuracy()),
        ),
        sections=card.sections(serving_end),
    )


def _no_version(period: Period, filters: Filters, generated_by: str, now: datetime) -> Report:
    note = (
        "No version of the titration model served production at the end of the period; "
        "choose a model version to see its card."
    )
    return Report(
        kind=ReportKind.MODEL_CARD,
        title="Model card: no version in production",
        period=period,
        generated_at=now,
        generated_by=generated_by,
        filters=filters,
        summary=(("model", NONE), ("serving production at the end of the period", "none")),
        sections=(Section(heading="Model", notes=(note,)),),
    )


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def gate_measured(result: GateResult) -> str:
    """A gate's key measured figures as one cell (the evidence file holds the rest)."""
    return pairs(pick(result.measured, _MEASURED.get(result.gate, tuple(result.measured))))


def gate_threshold(result: GateResult) -> str:
    """A gate's thresholds as one cell."""
    return pairs(pick(result.threshold, _THRESHOLDS.get(result.gate, tuple(result.threshold))))


def evidence_state(result: GateResult, data_dir: Path) -> str:
    """Whether a gate's evidence file still matches its recorded SHA-256, as read now."""
    if not result.evidence_path or not result.evidence_sha256:
        return "no file"
    try:
        gates.read_evidence(result, data_dir=data_dir)
    except OSError:
        return "missing"
    except ValueError:
        return "changed"
    return "matches"


class _Card:
    """What the card says about one version (reads on construction, then pure)."""

    def __init__(
        self,
        session: Session,
        version: ModelVersion,
        settings: Settings,
        period: Period,
        intervals: Sequence[lifecycle.ServingInterval],
    ) -> None:
        self.s, self.v, self.settings, self.period = session, version, settings, period
        self.actors = Actors(session)
        self.params, self.metrics = _dict(version.params), _dict(version.metrics)
        self.privacy = _dict(version.privacy)
        self.snapshot = session.scalars(
            select(TrainingSnapshot).where(col(TrainingSnapshot.content_hash) == version.data_hash)
        ).first()
        self.runs = lifecycle.gate_runs(session, name=version.name, version=version.version)
        self.signoffs = lifecycle.signoffs(session, name=version.name, version=version.version)
        self.transitions = lifecycle.transitions(
            session, name=version.name, version=version.version
        )
        self.intervals = [i for i in intervals if i.version == version.version]
        self.aliases = sorted(
            a
            for a, v in lifecycle.aliases(session, name=version.name).items()
            if v == version.version
        )
        self.spend = session.scalars(
            select(PrivacySpend)
            .where(
                col(PrivacySpend.model_name) == version.name,
                col(PrivacySpend.model_version) == version.version,
            )
            .order_by(col(PrivacySpend.id))
        ).first()
        cohort = self.privacy.get("cohort") or (self.spend.cohort if self.spend else None)
        self.cohort = str(cohort) if cohort else None
        self.cohort_rows: list[PrivacySpend] = []
        if self.cohort is not None:
            self.cohort_rows = list(
                session.scalars(
                    select(PrivacySpend).where(
                        col(PrivacySpend.cohort) == self.cohort,
                        col(PrivacySpend.created_at) < period.end,
                    )
                )
            )
        self.public_key = _public_key(settings)

    def _evidence(self, result: GateResult) -> str:
        return evidence_state(result, self.settings.data_dir)

    # ------------------------------------------------------------------ summary figures

    def epsilon_text(self) -> str:
        eps, delta = _float(self.privacy.get("epsilon")), _float(self.privacy.get("delta"))
        if eps is None:
            return "not private (no epsilon recorded)"
        return f"{num(eps)} ({num(delta)})"

    def newest_run(self) -> tuple[str, list[GateResult]] | None:
        return next(iter(self.runs.items()), None)

    def newest_run_text(self) -> str:
        newest = self.newest_run()
        if newest is None:
            return "none"
        _, results = newest
        if lifecycle.run_passed(results):
            return f"passed every gate ({when(results[0].created_at)})"
        failed = [r.gate for r in results if not r.passed]
        return f"failed: {', '.join(failed) or 'required gates missing'}"

    def signoff_text(self) -> str:
        roles = ", ".join(s.signoff_role for s in self.signoffs)
        return f"{len(self.signoffs)} of 2" + (f" ({roles})" if roles else "")

    def holdout_accuracy(self) -> str:
        return num(_float(_dict(self.metrics.get("dp")).get("accuracy")), 4)

    # ------------------------------------------------------------------ sections

    def sections(self, serving_end: str) -> tuple[Section, ...]:
        return (
            self._model(serving_end),
            Section(heading="Intended use", notes=INTENDED_USE),
            Section(heading="Out-of-scope use", notes=OUT_OF_SCOPE),
            self._training_data(),
            self._label_balance(),
            self._performance(),
            self._per_model(),
            self._per_subgroup(),
            self._validation(),
            self._gates(),
            self._privacy(),
            self._lineage(),
            self._signoffs(),
            self._serving(),
            self._transitions(),
            self._limits(),
        )

    def _model(self, serving_end: str) -> Section:
        v = self.v
        return Section(
            heading="Model",
            facts=(
                ("name and version", registry.label(v)),
                ("status now", v.status),
                ("aliases now", ", ".join(self.aliases) or "none"),
                ("serving production at the end of the period", serving_end),
                (
                    "model family",
                    "multinomial logistic regression over decrease, hold, "
                    "increase, with temperature calibration",
                ),
                (
                    "outputs",
                    "probabilities of decrease, hold and increase; the most probable "
                    "is proposed, its probability is the confidence the envelope reads",
                ),
                ("feature set", str(self.params.get("feature_set") or NONE)),
                ("inputs", f"{len(v.feature_names)} features"),
                ("registered", f"{when(v.created_at)} by {self.actors(v.created_by)}"),
            ),
        )

    def _training_data(self) -> Section:
        v, snap, p, m = self.v, self.snapshot, self.params, self.metrics
        facts: list[tuple[str, str]] = [("data hash", v.data_hash)]
        if snap is not None:
            checks = [c for c in snap.checks if isinstance(c, Mapping)]
            passed = sum(1 for c in checks if c.get("passed"))
            facts += [
                ("training snapshot", f"id {snap.id}, content hash {snap.content_hash}"),
                ("snapshot file sha256", snap.file_sha256),
                ("cohort", snap.cohort),
                ("source", snap.source),
                ("rows", str(snap.rows)),
                ("patients", str(snap.patients)),
                ("training patients", str(snap.train_patients)),
                ("holdout patients", str(snap.holdout_patients)),
                ("data window", f"{when(snap.window_start)} to {when(snap.window_end)}"),
                ("data checks", f"{passed} of {len(checks)} passed; snapshot {snap.status}"),
                ("snapshot built", f"{when(snap.created_at)} by {self.actors(snap.created_by)}"),
            ]
        else:
            rows = sum(
                int(m[k])
                for k in ("train_rows", "calibration_rows", "holdout_rows")
                if isinstance(m.get(k), int)
            )
            facts += [
                ("training snapshot", "none: simulated cohort rebuilt from recorded parameters"),
                ("source", "simulated protocol-labelled cohort (mlops.dataset); no real patient"),
                ("rows", str(rows) if rows else NONE),
                ("patients", num(p.get("n_patients"))),
                ("simulated days", num(p.get("days"))),
                ("simulation seed", num(p.get("seed"))),
            ]
        facts += [
            ("labels", str(p.get("labels") or NONE)),
            (
                "feature set",
                f"{p.get('feature_set') or NONE} ({len(v.feature_names)} features; "
                f"this code's: {FEATURE_SET_VERSION})",
            ),
            (
                "rows used",
                f"{num(m.get('train_rows'))} training, "
                f"{num(m.get('calibration_rows'))} calibration, {num(m.get('holdout_rows'))} "
                "holdout (split by patient)",
            ),
        ]
        return Section(heading="Training data", facts=tuple(facts))

    def _label_counts(self) -> dict[str, int]:
        raw = self.snapshot.label_counts if self.snapshot is not None else None
        raw = raw or self.metrics.get("label_counts") or {}
        return {str(k): int(n) for k, n in _dict(raw).items() if isinstance(n, int)}

    def _label_balance(self) -> Section:
        counts = self._label_counts()
        total = sum(counts.values())
        rows = tuple(
            (label, str(n), f"{100.0 * n / total:.1f}%" if total else NONE)
            for label, n in counts.items()
        )
        return Section(
            heading="Label balance",
            notes=() if rows else ("Label counts were not recorded for this version.",),
            table=Table(("label", "rows", "share"), rows) if rows else None,
            primary=False,
        )

    def _performance(self) -> Section:
        m = self.metrics
        dp = _dict(m.get("dp"))
        cost = _dict(m.get("privacy_cost"))
        constrained = _dict(m.get("direction_constrained"))
        return Section(
            heading="Performance on the holdout",
            facts=(
                ("holdout rows", num(m.get("holdout_rows"))),
                ("holdout patients", num(m.get("holdout_patients"))),
                ("accuracy", num(_float(dp.get("accuracy")), 4)),
                ("macro-F1", num(_float(dp.get("macro_f1")), 4)),
                ("log-loss (nats)", num(_float(dp.get("nll")), 4)),
                ("expected calibration error", num(_float(dp.get("ece")), 4)),
                ("calibration temperature", num(_float(m.get("temperature")), 4)),
                (
                    "cost of privacy (baseline minus DP)",
                    pairs([(k, num(_float(x), 4)) for k, x in cost.items()]),
                ),
                (
                    "direction constraint changed",
                    pairs(
                        [
                            (k, ", ".join(x) or "nothing")
                            for k, x in constrained.items()
                            if isinstance(x, list)
                        ]
                    ),
                ),
            ),
            notes=(
                "Measured on the holdout patients of the training data, whom training never "
                "saw; these figures are released without noise (outside epsilon).",
            ),
        )

    def _per_model(self) -> Section:
        rows = []
        for key, label in _MODELS:
            found = _dict(self.metrics.get(key))
            if not found:
                continue
            rows.append(
                (
                    label,
                    num(_float(found.get("n")), 6),
                    num(_float(found.get("accuracy")), 4),
                    num(_float(found.get("macro_f1")), 4),
                    num(_float(found.get("nll")), 4),
                    num(_float(found.get("ece")), 4),
                    num(_float(found.get("recall_decrease")), 4),
                    num(_float(found.get("recall_hold")), 4),
                    num(_float(found.get("recall_increase")), 4),
                )
            )
        columns = (
            "model", "rows", "accuracy", "macro-F1", "log-loss", "ECE",
            "recall decrease", "recall hold", "recall increase",
        )  # fmt: skip
        return Section(
            heading="Metrics overall",
            notes=() if rows else ("No holdout metrics were recorded for this version.",),
            table=Table(columns, tuple(rows)) if rows else None,
            primary=False,
        )

    def _per_subgroup(self) -> Section:
        rows: list[tuple[str, ...]] = []
        overall = _float(_dict(self.metrics.get("dp")).get("accuracy"))
        for dimension, groups in _dict(_dict(self.metrics.get("subgroups")).get("dp")).items():
            for label, found in _dict(groups).items():
                found = _dict(found)
                acc = _float(found.get("accuracy"))
                gap = None if acc is None or overall is None else overall - acc
                rows.append(
                    (
                        f"{dimension}:{label}",
                        "training holdout",
                        num(found.get("n") if "n" in found else None, 6),
                        num(acc, 4),
                        num(gap, 4),
                        "no (too few rows)" if found.get("insufficient") else "yes",
                    )
                )
        newest = self.newest_run()
        gate = next((r for r in (newest[1] if newest else []) if r.gate == "subgroup_gap"), None)
        if gate is not None:
            source = f"gate run {short(gate.run_id, 8)}"
            for label, found in _dict(gate.measured.get("subgroups")).items():
                found = _dict(found)
                rows.append(
                    (
                        label,
                        source,
                        num(found.get("rows")),
                        num(_float(found.get("accuracy")), 4),
                        num(_float(found.get("gap")), 4),
                        "yes" if found.get("assessed") else "no (too few rows)",
                    )
                )
        return Section(
            heading="Metrics per subgroup",
            notes=(
                "Subgroups: sex, age band, diabetes or chronic kidney disease. The gap is the "
                "overall accuracy minus the subgroup's (positive: worse in the subgroup).",
            )
            + (() if rows else ("No subgroup metrics were recorded for this version.",)),
            table=Table(
                ("subgroup", "source", "rows", "accuracy", "gap to overall", "assessed"),
                tuple(rows),
            )
            if rows
            else None,
            primary=False,
        )

    def _validation(self) -> Section:
        newest = self.newest_run()
        if newest is None:
            return Section(
                heading="Validation evidence",
                facts=(("validation runs", "0"),),
                notes=(
                    "This version has no validation run (v1 was registered in production "
                    "directly; its gates were the tests of issue 3).",
                ),
            )
        run_id, results = newest
        first = results[0]
        return Section(
            heading="Validation evidence",
            facts=(
                ("validation runs", str(len(self.runs))),
                ("newest run", run_id),
                ("run at", f"{when(first.created_at)} by {self.actors(first.created_by)}"),
                (
                    "verdict",
                    "passed every required gate" if lifecycle.run_passed(results) else "failed",
                ),
                ("failed gates", ", ".join(r.gate for r in results if not r.passed) or "none"),
                (
                    "missing required gates",
                    ", ".join(
                        g for g in lifecycle.REQUIRED_GATES if g not in {r.gate for r in results}
                    )
                    or "none",
                ),
                (
                    "compared with",
                    f"v{first.champion_version}"
                    if first.champion_version
                    else "no champion: the no-skill model",
                ),
                (
                    "evidence files",
                    f"{sum(self._evidence(r) == 'matches' for r in results)} of {len(results)} "
                    "match their recorded SHA-256",
                ),
            ),
        )

    def _gates(self) -> Section:
        rows = []
        for run_id, results in self.runs.items():
            for r in results:
                rows.append(
                    (
                        short(run_id, 8),
                        when(r.created_at),
                        r.gate,
                        "pass" if r.passed else "fail",
                        gate_measured(r),
                        gate_threshold(r),
                        r.detail,
                        r.evidence_sha256 or NONE,
                        self._evidence(r),
                    )
                )
        return Section(
            heading="Validation gates",
            notes=(
                "Every gate of every run, newest run first: what was measured against its "
                "threshold, the detail, and the evidence file's SHA-256 (checked as the "
                "report was built).",
            ),
            table=Table(
                (
                    "run",
                    "run at",
                    "gate",
                    "result",
                    "measured",
                    "threshold",
                    "detail",
                    "evidence sha256",
                    "evidence file",
                ),
                tuple(rows),
            )
            if rows
            else None,
            primary=False,
        )

    def _privacy(self) -> Section:
        p = self.privacy
        eps, delta = _float(p.get("epsilon")), _float(p.get("delta"))
        unit = str(p.get("privacy_unit") or "row")
        ledger_at_training = _dict(p.get("ledger"))
        facts: list[tuple[str, str]] = [
            ("private", yes_no(bool(p.get("private", eps is not None)))),
            ("trainer", str(p.get("trainer") or NONE)),
            ("epsilon", num(eps)),
            ("delta", num(delta)),
            ("target epsilon", num(p.get("target_epsilon"))),
            ("accountant", str(p.get("accountant") or NONE)),
            ("clipping (max gradient norm)", num(p.get("max_grad_norm"))),
            ("noise multiplier", num(p.get("noise_multiplier"))),
            ("sample rate", num(p.get("sample_rate"))),
            ("steps", num(p.get("steps"))),
            ("epochs", num(p.get("epochs"))),
            ("Poisson sampling", num(p.get("poisson_sampling"))),
            ("unit of privacy", unit),
            ("rows per patient (max)", num(p.get("rows_per_patient_max"))),
            ("epsilon per patient", num(p.get("patient_epsilon"))),
            ("delta per patient", num(p.get("patient_delta"))),
            ("secure_mode", "on" if p.get("secure_mode") else "off"),
            (
                "standardization",
                str(
                    p.get("scales")
                    or (
                        "from the training data (outside epsilon)"
                        if p.get("scales_from_training_data")
                        else NONE
                    )
                ),
            ),
            ("cohort", self.cohort or "none (not charged to a cohort's ledger)"),
        ]
        if self.spend is not None:
            facts.append(
                (
                    "ledger entry",
                    f"#{self.spend.id}: epsilon {num(self.spend.epsilon)}, delta "
                    f"{num(self.spend.delta)} charged {when(self.spend.created_at)}",
                )
            )
        if ledger_at_training:
            facts.append(
                (
                    "cohort at training",
                    f"budget {num(ledger_at_training.get('budget_epsilon'))}, spent "
                    f"{num(ledger_at_training.get('spent_epsilon_before'))} before and "
                    f"{num(ledger_at_training.get('spent_epsilon_after'))} after this run",
                )
            )
        if self.cohort is not None:
            spent = math.fsum(r.epsilon for r in self.cohort_rows)
            spent_delta = math.fsum(r.delta for r in self.cohort_rows)
            budget = self.settings.privacy_budget_epsilon
            facts.append(
                (
                    "cohort at the end of the period",
                    f"{_runs(len(self.cohort_rows))}; epsilon {num(spent)} of {num(budget)} "
                    f"spent, {num(max(budget - spent, 0.0))} remaining; delta {num(spent_delta)}",
                )
            )
        notes: list[str] = []
        if eps is not None and delta is not None:
            notes.append(
                f"Guarantee: ({num(eps)}, {num(delta)})-differential privacy for one {unit} of "
                "the training data. Whatever anyone does with this model, any conclusion about "
                f"whether one {unit} was in the training data, or what its data were, becomes "
                f"at most e^{num(eps, 4)} = {num(math.exp(eps), 3)} times more likely than "
                f"without it, except with probability {num(delta)}. Runs on the same cohort "
                "compose: their epsilons and deltas add up (basic sequential composition), "
                "which the privacy ledger counts against the cohort's budget."
            )
        else:
            notes.append("This version records no differential-privacy guarantee.")
        not_covered = [str(x) for x in p.get("not_covered") or [] if isinstance(x, str)]
        if not_covered:
            notes.append("Not covered by epsilon: " + "; ".join(not_covered) + ".")
        return Section(heading="Privacy guarantee", facts=tuple(facts), notes=tuple(notes))

    def _lineage(self) -> Section:
        v = self.v
        chain: list[str] = []
        parent, seen = v.parent_version, {v.version}
        while parent is not None and parent not in seen and len(chain) < 20:
            seen.add(parent)
            try:
                found = lifecycle.get_version(self.s, name=v.name, version=parent)
            except lifecycle.ModelNotFound:
                chain.append(f"v{parent} (not found)")
                break
            chain.append(f"v{found.version} ({found.status})")
            parent = found.parent_version
        problem = serving.artifact_problem(v)
        return Section(
            heading="Lineage",
            facts=(
                ("parent", f"v{v.parent_version}" if v.parent_version else "none"),
                ("ancestors", " <- ".join(chain) or "none"),
                ("code version", v.code_version),
                ("artifact sha256", v.artifact_sha256),
                (
                    "artifact file now",
                    "matches its SHA-256 and feature set" if problem is None else problem,
                ),
                ("data hash", v.data_hash),
                ("created by", self.actors(v.created_by)),
                ("created at", when(v.created_at)),
                ("training reason", str(self.params.get("reason") or NONE)),
            ),
        )

    def _signoffs(self) -> Section:
        rows = tuple(
            (
                s.signoff_role,
                s.signer_name,
                self.actors.user(s.signer_id),
                when(s.signed_at),
                s.meaning,
                s.note or NONE,
                s.record_sha256,
                _signature_state(s, self.v, self.public_key),
            )
            for s in self.signoffs
        )
        missing = lifecycle.missing_approvals(
            gates_ok=bool(self.runs) and lifecycle.run_passed(next(iter(self.runs.values()))),
            signed=[(s.signoff_role, s.signer_id) for s in self.signoffs],
        )
        return Section(
            heading="Sign-offs",
            notes=(
                "Promotion needs two electronic signatures by two people: an ML engineer and a "
                "clinical lead, each re-authenticated, on the exact artifact.",
                "Still missing: " + (", ".join(missing) or "nothing") + ".",
            ),
            table=Table(
                (
                    "role",
                    "signer (printed name)",
                    "signer account",
                    "signed at (UTC)",
                    "meaning",
                    "note",
                    "record sha256",
                    "signature",
                ),
                rows,
            )
            if rows
            else None,
            primary=False,
        )

    def _serving(self) -> Section:
        rows = tuple(
            (
                when(i.start),
                when(i.end) if i.end is not None else "still serving",
                self.actors(i.started_by),
                i.start_reason,
                self.actors(i.ended_by) if i.ended_by else NONE,
                i.end_reason or NONE,
            )
            for i in self.intervals
        )
        return Section(
            heading="Serving history",
            notes=() if rows else ("This version has not served in production.",),
            table=Table(("from", "until", "started by", "why", "ended by", "why ended"), rows)
            if rows
            else None,
            primary=False,
        )

    def _transitions(self) -> Section:
        rows = tuple(
            (
                when(t.at),
                f"{t.from_status or 'none'} -> {t.to_status}",
                self.actors(t.actor),
                t.reason,
            )
            for t in self.transitions
        )
        return Section(
            heading="Lifecycle transitions",
            table=Table(("at", "change", "by", "reason"), rows) if rows else None,
            notes=() if rows else ("No lifecycle transitions are recorded for this version.",),
            primary=False,
        )

    def _limits(self) -> Section:
        notes = [
            self._secure_mode_limit(),
            self._cuffless_limit(),
            self._holdout_limit(),
            "The safety case library is synthetic: the gates test the model's answers in the "
            "situations the protocol names (crisis, low blood pressure), not every situation "
            "a patient can be in.",
        ]
        sex = self._sex_swap()
        if sex:
            notes.append(sex)
        if str(self.privacy.get("privacy_unit") or "row") == "row":
            notes.append(
                "The privacy unit is a training row, not a patient: a patient with k rows is "
                "protected only by group privacy, about k times epsilon "
                f"(rows per patient at most {num(self.privacy.get('rows_per_patient_max'))})."
            )
        labels = str(self.params.get("labels") or "")
        if "clinician" in labels:
            notes.append(
                "Labels are clinicians' decisions: the model learns agreement with clinicians, "
                "who may themselves be wrong; outcomes are recorded, not yet gated on."
            )
        elif labels:
            notes.append(
                f"Labels: {labels}. Trained on simulated patients only: its figures say how "
                "it reproduces the written protocol, not how it does with real patients."
            )
        return Section(
            heading="Known limits",
            facts=(
                ("secure_mode", "on" if self.privacy.get("secure_mode") else "off"),
                ("cuffless inputs", ", ".join(self._cuffless()) or "none"),
                ("holdout", self._holdout_size()),
            ),
            notes=tuple(notes),
        )

    def _secure_mode_limit(self) -> str:
        seed = _dict(self.params.get("training")).get("seed")
        if isinstance(seed, int) and not isinstance(seed, bool):
            origin = (
                f"The training seed is fixed and recorded (seed {seed}): harmless for simulated "
                "data, it would void the guarantee on real data (anyone knowing the seed and all "
                "rows but one could replay the training)."
            )
        else:
            origin = (
                "The training seed was drawn per run from a cryptographically secure generator "
                "(Python's secrets) and never recorded, but the noise and the Poisson batch "
                "sampling are then drawn from torch's pseudo-random generator seeded with it, "
                "which is not cryptographically secure: recovering its state would remove the "
                "noise."
            )
        return (
            "Opacus secure_mode is off: it needs torchcsprng, which does not install for this "
            f"Python and torch. {origin} Floating-point attacks on the Gaussian noise "
            "(Mironov 2012) are not mitigated; epsilon is that of the idealised mechanism."
        )

    def _cuffless(self) -> list[str]:
        return [n for n in self.v.feature_names if n.startswith("cuffless")]

    def _cuffless_limit(self) -> str:
        found = self._cuffless()
        if not found:
            return (
                "Cuffless (wearable) blood pressure is not an input of this version; only "
                "validated-cuff readings feed its blood-pressure features."
            )
        tested = [n for n in found if n in gates.BP_FEATURES]
        return (
            "Cuffless (wearable) blood pressure is not used for titration: it never feeds the "
            "blood-pressure level features, the protocol's rules, the labels of the simulated "
            "cohort, the crisis and low-BP alerts or the control status, which read validated "
            "cuffs only (2025 AHA/ACC). It enters the model only as trend features of their "
            f"own ({', '.join(found)}), so wearable readings can move its probabilities; "
            + (
                "the directional safety gate does not vary them (it raises the validated-cuff "
                "features only). "
                if not tested
                else ""
            )
            + "Using cuffless readings for management is outside the change-control plan."
        )

    def _holdout_facts(self) -> tuple[Any, Any, dict[str, Any]]:
        newest = self.newest_run()
        found = {r.gate: r for r in (newest[1] if newest else [])}
        gate = found.get("holdout_noninferiority")
        rows = (gate.measured.get("rows") if gate else None) or self.metrics.get("holdout_rows")
        patients = (gate.measured.get("patients") if gate else None) or self.metrics.get(
            "holdout_patients"
        )
        thresholds: dict[str, Any] = {}
        for r in found.values():
            thresholds.update(_dict(r.threshold))
        return rows, patients, thresholds

    def _holdout_size(self) -> str:
        rows, patients, _ = self._holdout_facts()
        return f"{num(rows)} rows of {num(patients)} patients"

    def _holdout_limit(self) -> str:
        rows, patients, t = self._holdout_facts()
        s = self.settings
        nll = t.get("nll_difference_upper_95_at_most", s.gate_nll_margin)
        acc = t.get("accuracy_difference_at_least", -s.gate_accuracy_margin)
        ece = t.get("ece_at_most", s.gate_max_ece)
        gap = t.get("gap_at_most", s.gate_max_subgroup_gap)
        min_rows = t.get("min_rows", s.gate_min_subgroup_rows)
        newest = self.newest_run()
        gate = next((r for r in (newest[1] if newest else []) if r.gate == "subgroup_gap"), None)
        unassessed = [
            k
            for k, g in _dict(gate.measured.get("subgroups") if gate else None).items()
            if not _dict(g).get("assessed")
        ]
        text = (
            f"The holdout is small ({num(rows)} rows of {num(patients)} patients), so the "
            f"non-inferiority margins are wide: log-loss upper 95% bound at most {num(nll)} "
            f"nats above the comparator, accuracy difference at least {num(acc)}, expected "
            f"calibration error at most {num(ece)}, subgroup accuracy gap at most {num(gap)} "
            f"(subgroups of at least {num(min_rows)} rows). The gates can show that the model "
            "is not clearly worse than its comparator, not that it is better."
        )
        if unassessed:
            text += f" Too small to assess: {', '.join(unassessed)}."
        return text

    def _sex_swap(self) -> str | None:
        newest = self.newest_run()
        gate = next(
            (r for r in (newest[1] if newest else []) if r.gate == "safety_invariance"), None
        )
        swap = _dict(_dict(gate.measured if gate else None).get("sex_swap_reported_not_gated"))
        if not swap:
            return None
        return (
            "Sex is reported, not gated: swapping female and male moves a probability by up to "
            f"{num(_float(swap.get('largest_change')), 4)} and changes "
            f"{num(swap.get('changed_proposals'))} of {num(swap.get('rows'))} proposals "
            "(DP noise gives every 0/1 input a random weight of this size)."
        )


def _runs(n: int) -> str:
    return "1 run" if n == 1 else f"{n} runs"


def _public_key(settings: Settings) -> Ed25519PublicKey | None:
    try:
        return lifecycle.signing_public_key(settings)
    except (SigningKeyMissing, OSError, ValueError):
        return None


def _signature_state(
    signoff: Any, version: ModelVersion, public_key: Ed25519PublicKey | None
) -> str:
    if public_key is None:
        return "not checked (no signing key)"
    return (
        "valid"
        if lifecycle.verify_signoff(signoff, version, public_key=public_key)
        else ("INVALID")
    )
