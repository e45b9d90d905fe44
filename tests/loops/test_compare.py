"""Usual care against the loops: both arms run and are counted the same way."""

from __future__ import annotations

import numpy as np

from loops.compare import run_arm, table


def _always_increase(x: np.ndarray) -> np.ndarray:
    return np.tile([0.02, 0.03, 0.95], (len(x), 1))


def test_compare_when_both_arms_run_counts_reviews_and_automatic_changes() -> None:
    usual = run_arm("usual care", n_patients=8, days=100, seed=2, scorer=None)
    loop = run_arm("ClinAIOps", n_patients=8, days=100, seed=2, scorer=_always_increase)
    # Usual care reviews each patient once in 100 days (day 90).
    assert usual.reviews_per_patient_month == 8 / 8 / (100 / 30)
    assert usual.automatic_changes == 0
    assert loop.automatic_changes > 0
    rendered = table([usual, loop])
    assert "| clinician reviews per patient-month | 0.30 |" in rendered
    assert rendered.count("\n") == 9
