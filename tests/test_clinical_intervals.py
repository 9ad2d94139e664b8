"""Vectorised bootstrap intervals give the values the per-resample sklearn loop gave, resample by resample."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedward.common import clinical
from fedward.common.clinical import (
    BOOTSTRAP_RESAMPLES,
    auc_batch,
    balanced_accuracy_batch,
    bootstrap_indices,
    bootstrap_interval,
    macro_auc_batch,
    percentile_interval,
)
from fedward.common.metrics import binary_metrics, multiclass_metrics

Scalar = Callable[[np.ndarray, np.ndarray], float]


def _split(n: int, seed: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    """Binary labels and scores that separate them somewhat; `ties` rounds scores to one decimal."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1)
    return y, np.round(p, 1) if ties else p


RESAMPLES = 200  # enough to compare resample by resample; the metrics' own 1000 are checked once
SPLITS = [_split(40, 1, ties=True), _split(73, 2, ties=False), _split(6, 3, ties=True)]


def _old_auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else math.nan


def _old_balanced(y: np.ndarray, p: np.ndarray) -> float:
    """The per-resample statistic common/metrics.py used before."""
    pred = p >= 0.5
    if y.all() or not y.any():
        return math.nan
    return float((pred[y == 1].mean() + (~pred[y == 0]).mean()) / 2)


def _old_macro_auc(y: np.ndarray, p: np.ndarray) -> float:
    k = p.shape[1]
    if len(np.unique(y)) < k:
        return math.nan
    return float(roc_auc_score(y, p, multi_class="ovr", labels=list(range(k))))


def _old_interval(
    statistic: Scalar, y: np.ndarray, s: np.ndarray, resamples: int = RESAMPLES
) -> tuple[float, float]:
    """The per-resample percentile bootstrap the site ran before (one sklearn call per resample)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = np.array([statistic(y[i], s[i]) for i in bootstrap_indices(len(y), resamples=resamples)])
    return percentile_interval(values, resamples)


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert np.array_equal(np.isnan(a), np.isnan(b))
    ok = ~np.isnan(a)
    np.testing.assert_allclose(a[ok], b[ok], rtol=0, atol=1e-12)


@pytest.mark.parametrize(("y", "p"), SPLITS)
def test_every_resample_and_the_interval_equal_the_per_resample_loop(y: np.ndarray, p: np.ndarray) -> None:
    index = bootstrap_indices(len(y), resamples=RESAMPLES)
    for vectorised, old in ((auc_batch, _old_auc), (balanced_accuracy_batch(0.5), _old_balanced)):
        _same(vectorised(y[index], p[index]), np.array([old(y[i], p[i]) for i in index]))
        new = bootstrap_interval(vectorised, y, p, resamples=RESAMPLES)
        np.testing.assert_allclose(new, _old_interval(old, y, p), rtol=0, atol=1e-12)


def test_macro_auc_equals_sklearn_one_vs_rest() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 25)
    probs = np.round(rng.dirichlet([1, 1, 1], 25) + 0.3 * np.eye(3)[y], 1)
    probs /= probs.sum(axis=1, keepdims=True)
    index = bootstrap_indices(len(y), resamples=RESAMPLES)
    _same(macro_auc_batch(y[index], probs[index]), np.array([_old_macro_auc(y[i], probs[i]) for i in index]))
    out = multiclass_metrics(y, probs, intervals=True)
    expected = bootstrap_interval(macro_auc_batch, y, probs)
    np.testing.assert_allclose((out["roc-auc-ci-low"], out["roc-auc-ci-high"]), expected, atol=1e-12)


def test_binary_metrics_keep_their_intervals() -> None:
    """Against the old loop at the metrics' full 1000 resamples (AUC), and wired to the same bootstrap."""
    y, p = SPLITS[1]
    out = binary_metrics(y, p, intervals=True)
    clipped = np.clip(p, 1e-7, 1 - 1e-7)
    auc = _old_interval(_old_auc, y, clipped, BOOTSTRAP_RESAMPLES)
    balanced = bootstrap_interval(balanced_accuracy_batch(0.5), y, clipped)
    np.testing.assert_allclose((out["roc-auc-ci-low"], out["roc-auc-ci-high"]), auc, rtol=0, atol=1e-12)
    ci = (out["balanced-accuracy-ci-low"], out["balanced-accuracy-ci-high"])
    np.testing.assert_allclose(ci, balanced, rtol=0, atol=1e-12)
    assert out["roc-auc-ci-low"] <= out["roc-auc"] <= out["roc-auc-ci-high"]


def test_undefined_resamples_are_left_out_and_too_many_give_no_interval() -> None:
    y, p = np.array([0, 0, 0, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4, 0.9])  # a third of resamples lack a 1
    assert bootstrap_interval(auc_batch, y, p, resamples=RESAMPLES) == _old_interval(_old_auc, y, p)
    assert _old_interval(_old_auc, y, p) == (1.0, 1.0)
    one_class = np.zeros(5, dtype=int)
    assert all(math.isnan(v) for v in bootstrap_interval(auc_batch, one_class, p))
    assert all(math.isnan(v) for v in bootstrap_interval(balanced_accuracy_batch(0.5), y[:1], p[:1]))


def test_chunks_do_not_change_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    y, p = SPLITS[1]
    whole = bootstrap_interval(auc_batch, y, p)
    monkeypatch.setattr(clinical, "_CHUNK_VALUES", 7 * len(y))  # 143 chunks of 7 resamples
    assert bootstrap_interval(auc_batch, y, p) == whole
