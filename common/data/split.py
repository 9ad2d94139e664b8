"""Held-out splits by patient, stratified by label."""

from __future__ import annotations

import numpy as np


def stratified_split(
    patients: np.ndarray, labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split unique `patients` (one label each) into train and test index arrays.

    Stratifies by label when every class has at least two patients; a tiny site with a singleton
    class falls back to a plain random split. No patient lands in both splits.
    """
    from sklearn.model_selection import train_test_split  # scikit-learn (and pandas): at sites only

    index = np.arange(len(patients))
    if len(index) < 2 or test_fraction <= 0:
        return index, index[:0]
    _, counts = np.unique(labels, return_counts=True)
    stratify = labels if counts.min() >= 2 and len(counts) > 1 else None
    n_test = max(1, round(test_fraction * len(index)))
    if stratify is not None:
        n_test = max(n_test, len(counts))
    train, test = train_test_split(index, test_size=n_test, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(test)


def split_by_patient(
    patients: list[str], strata: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test sample indices such that no patient has samples in both.

    Unique patients are split with `stratified_split`, stratified by each patient's first stratum.
    """
    unique, first = np.unique(np.asarray(patients, dtype=object), return_index=True)
    _, test_p = stratified_split(unique, np.asarray(strata)[first], test_fraction, seed)
    test_set = set(unique[test_p].tolist())
    in_test = np.array([p in test_set for p in patients], dtype=bool)
    index = np.arange(len(patients))
    return index[~in_test], index[in_test]
