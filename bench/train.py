"""Training benchmark: DP-SGD against the same model trained without privacy, on 100,000
examples of the model's real feature set, with the time of each, their ratio, and accuracy.

The examples are synthetic but shaped like the real ones: a small simulated cohort labelled
by the written protocol (`mlops.dataset`, the simulator and `mlops.features.compute_features`)
is split by patient into a training side and a test side, and each side is resampled to the
requested size with small jitter on the continuous features (labels kept from the source row;
binary, count and missing-indicator features untouched). Both trainers get the same rows, the
same public scales (`mlops.retrain.PUBLIC_SCALES`), the same optimizer, schedule and seed, as
in a retraining run; DP-SGD adds per-sample clipping, noise and Poisson sampling at the
target epsilon with delta = 1/(10 n). Timed, in wall-clock and CPU seconds (CPU time is
what a busy shared machine distorts least): `mlops.dp.train_dp` (its noise calibration and
accounting included) and `mlops.dp.train_baseline`; data preparation is not timed. Accuracy
and macro-F1 are on the test side (other patients' rows).

Bounded: at most 1,000,000 rows, and an alarm ends the run after --limit seconds (default
1800).

Usage: python bench/train.py [--rows 100000] [--epochs 5] [--batch-size 256] [--epsilon 3]
       [--accountant rdp] [--limit 1800]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlops import dataset, retrain, snapshots  # noqa: E402
from mlops.dp import max_delta, train_baseline, train_dp  # noqa: E402
from mlops.features import FEATURE_NAMES, NULLABLE_FEATURES  # noqa: E402
from mlops.model import evaluate  # noqa: E402
from validation.data_checks import RANGES  # noqa: E402

MAX_ROWS = 1_000_000
SEED_PATIENTS = 120
SEED_DAYS = 84
# Jitter, as a share of each continuous feature's public scale.
JITTER = 0.05


def _continuous() -> list[int]:
    indicators = {f"{n}_missing" for n in NULLABLE_FEATURES}
    return [
        j
        for j, name in enumerate(FEATURE_NAMES)
        if name not in indicators and not RANGES[name].integer and name != "ladder_position"
    ]


def resample(
    X: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """n rows drawn with replacement, continuous features jittered and kept in range."""
    idx = rng.integers(0, len(y), n)
    out = X[idx].copy()
    scales = retrain.public_standardizer().scale
    for j in _continuous():
        name = FEATURE_NAMES[j]
        column = out[:, j]
        present = ~np.isnan(column)
        column[present] += rng.normal(0.0, JITTER * scales[j], int(present.sum()))
        np.clip(column, RANGES[name].lo, RANGES[name].hi, out=column)
    return out, y[idx]


def main() -> None:
    """Run the benchmark and print its figures (JSON, then a table row)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--test-rows", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--accountant", choices=("rdp", "prv"), default="rdp")
    parser.add_argument("--limit", type=int, default=1800, help="seconds before giving up")
    args = parser.parse_args()
    if not 1_000 <= args.rows <= MAX_ROWS or not 100 <= args.test_rows <= MAX_ROWS:
        parser.error(f"--rows must lie in 1,000..{MAX_ROWS:,}, --test-rows in 100..{MAX_ROWS:,}")
    signal.signal(signal.SIGALRM, lambda *_: sys.exit(f"stopped after {args.limit} s (--limit)"))
    signal.alarm(args.limit)
    retrain.quiet_secure_rng_warning()  # secure_mode is off on purpose (docs/privacy.md)

    started = time.perf_counter()
    seed = dataset.build(n_patients=SEED_PATIENTS, days=SEED_DAYS, seed=11)
    groups = np.array([snapshots.patient_group(str(g)) for g in seed.groups])
    test_side = snapshots.holdout_mask(groups, 0.2)
    rng = np.random.default_rng(2026)
    X, y = resample(seed.X[~test_side], seed.y[~test_side], args.rows, rng)
    X_test, y_test = resample(seed.X[test_side], seed.y[test_side], args.test_rows, rng)
    prepared = time.perf_counter() - started
    common = {
        "feature_names": FEATURE_NAMES,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": 7,
        "standardizer": retrain.public_standardizer(),
    }

    t0, c0 = time.perf_counter(), time.process_time()
    private = train_dp(
        X,
        y,
        target_epsilon=args.epsilon,
        delta=max_delta(args.rows),
        max_grad_norm=args.max_grad_norm,
        accountant=args.accountant,
        **common,  # type: ignore[arg-type]
    )
    dp_seconds, dp_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    plain = train_baseline(X, y, **common)  # type: ignore[arg-type]
    sgd_seconds, sgd_cpu = time.perf_counter() - t0, time.process_time() - c0

    dp_metrics = evaluate(private.model, X_test, y_test)
    sgd_metrics = evaluate(plain.model, X_test, y_test)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
        "rows": args.rows,
        "test_rows": args.test_rows,
        "seed_patients": SEED_PATIENTS,
        "seed_rows": len(seed.y),
        "label_shares": [round(float(s), 4) for s in np.bincount(y, minlength=3) / len(y)],
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "steps_dp": private.steps,
        "steps_sgd": plain.steps,
        "epsilon": round(private.epsilon, 4),
        "delta": private.delta,
        "accountant": args.accountant,
        "noise_multiplier": round(private.noise_multiplier, 4),
        "sample_rate": private.sample_rate,
        "prepare_s": round(prepared, 1),
        "dp_s": round(dp_seconds, 2),
        "sgd_s": round(sgd_seconds, 2),
        "ratio": round(dp_seconds / sgd_seconds, 2),
        "dp_cpu_s": round(dp_cpu, 2),
        "sgd_cpu_s": round(sgd_cpu, 2),
        "cpu_ratio": round(dp_cpu / sgd_cpu, 2),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "accuracy_dp": round(dp_metrics["accuracy"], 4),
        "accuracy_sgd": round(sgd_metrics["accuracy"], 4),
        "macro_f1_dp": round(dp_metrics["macro_f1"], 4),
        "macro_f1_sgd": round(sgd_metrics["macro_f1"], 4),
    }
    print(json.dumps(result))
    print(
        f"| {result['date']} | {args.rows:,} | {args.epochs} | {args.batch_size} | "
        f"{result['epsilon']} ({args.accountant}) | {dp_seconds:.1f} | {sgd_seconds:.1f} | "
        f"{result['ratio']} | {dp_cpu:.1f} | {sgd_cpu:.1f} | {result['cpu_ratio']} | "
        f"{result['accuracy_dp']:.3f} | {result['accuracy_sgd']:.3f} | "
        f"{result['macro_f1_dp']:.3f} | {result['macro_f1_sgd']:.3f} |"
    )


if __name__ == "__main__":
    main()
