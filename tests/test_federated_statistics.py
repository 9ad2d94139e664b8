"""Federated feature statistics equal the pooled ones; partitions and splits do not overlap."""

from __future__ import annotations

import numpy as np
import pytest

from fedward.common.data.ckd import load_ckd_csv
from fedward.common.data.ckd_reference import CKD_REFERENCE
from fedward.common.data.ckd_schema import NUM_FEATURES
from fedward.common.data.partition import partition_indices
from fedward.common.data.split import stratified_split
from fedward.common.dp_release import release_sum
from fedward.common.stats import Standardiser


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_federated_statistics_equal_pooled(ckd_csv, scheme: str) -> None:
    table = load_ckd_csv(ckd_csv, strict=False)
    parts = partition_indices(table.y, 4, scheme, alpha=0.5, seed=3)
    federated = Standardiser.combine(
        [CKD_REFERENCE.contributions(table.x[p]).sum(axis=0) for p in parts], CKD_REFERENCE
    )
    pooled = Standardiser.combine([CKD_REFERENCE.contributions(table.x).sum(axis=0)], CKD_REFERENCE)
    np.testing.assert_allclose(federated.mean, pooled.mean, rtol=1e-10)
    np.testing.assert_allclose(federated.std, pooled.std, rtol=1e-10)
    # against the plain moments: the mean is close (values beyond 3 reference scales count as 3)
    plain = np.nanmean(table.x.astype(np.float64), axis=0)
    assert np.median(np.abs(pooled.mean - plain) / CKD_REFERENCE.scale) < 0.05


def test_a_patient_contributes_a_bounded_vector_whatever_the_values() -> None:
    x = np.full((3, NUM_FEATURES), np.nan)
    x[0] = 1e9  # absurd values
    x[1] = -1e9
    rows = CKD_REFERENCE.contributions(x)
    assert rows.shape == (3, 1 + 3 * NUM_FEATURES)
    assert np.all(np.linalg.norm(rows, axis=1) <= CKD_REFERENCE.bound + 1e-12)
    assert rows[2, 0] == 1 and not rows[2, 1:].any()  # all missing: counted as a patient, nothing else


def test_noisy_sums_are_shrunk_towards_the_reference_by_their_uncertainty() -> None:
    x = np.array([[80.0] + [np.nan] * (NUM_FEATURES - 1)] * 5)
    sums = release_sum(CKD_REFERENCE.contributions(x), CKD_REFERENCE.bound, 0.0)
    exact = Standardiser.combine([sums], CKD_REFERENCE)
    assert exact.mean[0] == pytest.approx(80.0)  # exact sums: the data's own mean
    assert exact.std[0] == 0.5 * CKD_REFERENCE.scale[0]  # deviation floored at half the reference scale
    noisy = Standardiser.combine([sums], CKD_REFERENCE, noise_std=6 * CKD_REFERENCE.bound)
    assert abs(noisy.mean[0] - CKD_REFERENCE.center[0]) < 1.0  # 5 patients under noise 51: the reference
    assert abs(noisy.std[0] - CKD_REFERENCE.scale[0]) < 0.01 * CKD_REFERENCE.scale[0]
    many = Standardiser.combine([sums * 1000], CKD_REFERENCE, noise_std=6 * CKD_REFERENCE.bound)
    assert many.mean[0] == pytest.approx(80.0, abs=0.5)  # 5000 patients: the noise hardly matters


def test_release_noise_has_the_calibrated_scale_and_is_fresh() -> None:
    rows = np.ones((50, 4)) / 2  # norm 1
    draws = np.stack([release_sum(rows, 1.0, 3.0) for _ in range(400)])
    assert np.allclose(draws.mean(axis=0), 25.0, atol=0.6)
    assert np.allclose(draws.std(axis=0), 3.0, rtol=0.15)
    assert np.array_equal(release_sum(rows, 1.0, 3.0, seed=5), release_sum(rows, 1.0, 3.0, seed=5))


def test_standardiser_imputes_the_federated_mean() -> None:
    x = np.full((3, NUM_FEATURES), np.nan)
    x[:, 0] = [40.0, 60.0, np.nan]
    scaler = Standardiser.combine([CKD_REFERENCE.contributions(x).sum(axis=0)], CKD_REFERENCE)
    out = scaler.apply(x)
    assert scaler.mean[0] == pytest.approx(50.0)
    assert out[2, 0] == 0.0 and out[0, 1] == 0.0  # missing -> mean -> 0 after centring


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partitions_cover_every_row_once(scheme: str) -> None:
    labels = np.array([1] * 250 + [0] * 150)
    parts = partition_indices(labels, 5, scheme, alpha=0.5, seed=0)
    joined = np.concatenate(parts)
    assert len(joined) == 400 and len(np.unique(joined)) == 400
    again = partition_indices(labels, 5, scheme, alpha=0.5, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))  # seeded


def test_split_is_stratified_and_disjoint() -> None:
    labels = np.array([1] * 50 + [0] * 30)
    train, test = stratified_split(np.arange(80), labels, 0.2, seed=1)
    assert not set(train) & set(test) and len(train) + len(test) == 80
    assert labels[test].sum() == 10  # 20 % of each class
