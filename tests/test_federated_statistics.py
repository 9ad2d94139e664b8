"""Federated feature statistics equal the pooled ones; partitions and splits do not overlap."""

from __future__ import annotations

import numpy as np
import pytest

from common.data.ckd import load_ckd_csv
from common.data.partition import partition_indices
from common.data.split import stratified_split
from common.stats import FeatureMoments, Standardiser


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_federated_statistics_equal_pooled(ckd_csv, scheme: str) -> None:
    table = load_ckd_csv(ckd_csv, strict=False)
    parts = partition_indices(table.y, 4, scheme, alpha=0.5, seed=3)
    federated = Standardiser.combine(FeatureMoments.of(table.x[p]) for p in parts)
    np.testing.assert_allclose(federated.mean, np.nanmean(table.x.astype(np.float64), axis=0), rtol=1e-10)
    np.testing.assert_allclose(federated.std, np.nanstd(table.x.astype(np.float64), axis=0), rtol=1e-8)


def test_standardiser_imputes_the_federated_mean() -> None:
    x = np.array([[1.0, np.nan], [3.0, 4.0], [np.nan, 8.0]])
    scaler = Standardiser.combine([FeatureMoments.of(x[:1]), FeatureMoments.of(x[1:])])
    out = scaler.apply(x)
    assert out[2, 0] == 0.0 and out[0, 1] == 0.0  # missing -> mean -> 0 after centring
    assert np.isclose(out[1, 0], (3.0 - 2.0) / 1.0)


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
