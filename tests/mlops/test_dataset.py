"""The first model's training set: simulated, protocol-labelled, split by patient."""

from __future__ import annotations

from collections import Counter

import numpy as np

from mlops.dataset import ACTIONS, build, split_by_patient


def test_build_when_same_seed_gives_the_same_data_hash() -> None:
    a = build(n_patients=12, days=35, seed=3)
    b = build(n_patients=12, days=35, seed=3)
    c = build(n_patients=12, days=35, seed=4)
    assert a.data_hash == b.data_hash
    assert np.array_equal(a.y, b.y)
    assert a.data_hash != c.data_hash


def test_build_when_cohort_simulated_covers_every_action() -> None:
    data = build(n_patients=60, days=70, seed=1)
    counts = Counter(ACTIONS[i] for i in data.y.tolist())
    assert all(counts[a] > 0 for a in ACTIONS)
    assert data.X.shape == (len(data.y), len(data.feature_names))
    assert set(data.label_reasons) >= {"above_target", "at_target", "low_bp", "poor_adherence"}


def test_split_when_by_patient_never_shares_a_patient() -> None:
    data = build(n_patients=20, days=35, seed=2)
    train, held = split_by_patient(data.groups, holdout=0.25, seed=0)
    assert not set(data.groups[train]) & set(data.groups[held])
    assert train.sum() + held.sum() == len(data.y)
