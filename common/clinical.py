"""Clinical reporting metrics: calibration (ECE), balanced accuracy and 95 % confidence intervals.

Everything a site sends is an aggregate that pools exactly across sites: calibration as per-bin sums,
proportions as counts. Confidence intervals of a site's own metrics are bootstrapped at the site from its
predictions (which never leave it); pooled proportions get Wilson intervals from the summed counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import numpy as np

CALIBRATION_BINS = 10
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 1000


def calibration_sums(
    confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS
) -> dict[str, float]:
    """Per-bin count, summed confidence and summed correctness (`cal-<b>-n|conf|hit`), for the ECE."""
    confidence = np.asarray(confidence, dtype=np.float64)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    out: dict[str, float] = {}
    for b in range(bins):
        inside = index == b
        out[f"cal-{b}-n"] = float(inside.sum())
        out[f"cal-{b}-conf"] = float(confidence[inside].sum())
        out[f"cal-{b}-hit"] = float(np.asarray(correct, dtype=np.float64)[inside].sum())
    return out


def expected_calibration_error(sums: Mapping[str, float], bins: int = CALIBRATION_BINS) -> float:
    """ECE = Σ_b (n_b / n) |accuracy_b − confidence_b| from (possibly pooled) calibration sums."""
    counts = [float(sums.get(f"cal-{b}-n", 0.0)) for b in range(bins)]
    total = sum(counts)
    if total == 0:
        return math.nan
    gap = sum(
        abs(float(sums[f"cal-{b}-hit"]) - float(sums[f"cal-{b}-conf"])) for b in range(bins) if counts[b]
    )
    return gap / total


def pool_calibration(
    per_site: Iterable[Mapping[str, float]], bins: int = CALIBRATION_BINS
) -> dict[str, float]:
    """Summed calibration sums of several sites (the pooled ECE is exact); a site that withheld its
    table (NaN values, common/disclosure.py) is left out."""
    keys = [f"cal-{b}-{part}" for b in range(bins) for part in ("n", "conf", "hit")]
    sites = [s for s in per_site if not any(math.isnan(float(s.get(k, 0.0))) for k in keys)]
    return {k: float(sum(float(s.get(k, 0.0)) for s in sites)) for k in keys}


def wilson_interval(successes: float, trials: float, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion (NaN, NaN without trials)."""
    n = round(trials)
    if n <= 0:
        return math.nan, math.nan
    from scipy.stats import binomtest  # scipy.stats loads in ~0.6 s: only when an interval is asked for

    ci = binomtest(round(successes), n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


BatchStatistic = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""A statistic of many resamples at once: labels (r, n) and scores (r, n, ...) -> (r,) values, NaN
where a resample leaves it undefined (e.g. AUC of a one-class resample)."""

_CHUNK_VALUES = 1 << 21  # resampled scores held at once (16 MiB of float64)


def bootstrap_indices(n: int, *, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> np.ndarray:
    """The (resamples, n) case indices of a paired bootstrap of `n` cases."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_interval(
    statistic: BatchStatistic,
    y_true: np.ndarray,
    scores: np.ndarray,
    *,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over cases (paired resampling), all resamples
    evaluated at once (in chunks that bound memory).

    Resamples where the statistic is undefined are left out; NaN when fewer than half are defined.
    """
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    if len(y_true) < 2:
        return math.nan, math.nan
    index = bootstrap_indices(len(y_true), seed=seed, resamples=resamples)
    rows = max(1, _CHUNK_VALUES // max(1, scores.size))
    values = np.concatenate(
        [statistic(y_true[i], scores[i]) for i in np.array_split(index, -(-resamples // rows))]
    )
    return percentile_interval(values, resamples, confidence)


def percentile_interval(
    values: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Percentile interval of bootstrap `values`, NaN ones left out; NaN when fewer than half of the
    `resamples` are defined."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < resamples / 2:
        return math.nan, math.nan
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def auc_batch(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC of every row of (r, n) labels and scores: the Mann-Whitney U from average ranks (ties
    count one half, as in sklearn's roc_auc_score); NaN for rows holding one class only."""
    from scipy.stats import rankdata

    positive = np.asarray(y).astype(bool)
    ranks = rankdata(scores, axis=-1)
    pos = positive.sum(axis=-1)
    neg = positive.shape[-1] - pos
    u = np.where(positive, ranks, 0.0).sum(axis=-1) - pos * (pos + 1) / 2
    defined = (pos > 0) & (neg > 0)
    return np.where(defined, u / np.where(defined, pos * neg, 1), math.nan)


def balanced_accuracy_batch(threshold: float) -> BatchStatistic:
    """Balanced accuracy of every row of (r, n) binary labels and positive-class scores at `threshold`
    (NaN for rows holding one class only)."""

    def statistic(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
        positive, predicted = np.asarray(y).astype(bool), np.asarray(scores) >= threshold
        pos = positive.sum(axis=-1)
        neg = positive.shape[-1] - pos
        tp = (positive & predicted).sum(axis=-1)
        tn = (~positive & ~predicted).sum(axis=-1)
        defined = (pos > 0) & (neg > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            value = (tp / pos + tn / neg) / 2
        return np.where(defined, value, math.nan)

    return statistic


def macro_auc_batch(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Macro one-vs-rest ROC AUC of every row of (r, n) class labels and (r, n, k) probabilities (as
    sklearn's `multi_class="ovr"`); NaN for rows missing a class."""
    k = probs.shape[-1]
    return np.mean([auc_batch(y == c, probs[..., c]) for c in range(k)], axis=0)


def mean_interval(values: np.ndarray, confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-case values, e.g. per-case Dice."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < 2 or np.ptp(values) == 0:
        return (float(values[0]), float(values[0])) if len(values) else (math.nan, math.nan)
    from scipy.stats import bootstrap

    result = bootstrap(
        (values,), np.mean, confidence_level=confidence, n_resamples=BOOTSTRAP_RESAMPLES,
        random_state=np.random.default_rng(seed), method="percentile",
    )  # fmt: skip
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def with_interval(out: dict[str, float], key: str, interval: tuple[float, float]) -> None:
    """Store an interval as `<key>-ci-low` / `<key>-ci-high`."""
    out[f"{key}-ci-low"], out[f"{key}-ci-high"] = interval
