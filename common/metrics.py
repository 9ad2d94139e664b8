"""Classification metrics at a site, and their exact pooling across sites.

scikit-learn (with scipy and pandas behind it, ≈ 140 MB) is imported by the functions a site runs, not
by the module: the coordinator, which only pools, never loads it."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from fedward.common.clinical import (
    auc_batch,
    balanced_accuracy_batch,
    bootstrap_interval,
    calibration_sums,
    expected_calibration_error,
    macro_auc_batch,
    pool_calibration,
    wilson_interval,
    with_interval,
)

BINARY_KEYS = ("accuracy", "balanced-accuracy", "roc-auc", "sensitivity", "specificity", "f1", "loss", "ece")


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def binary_metrics(
    y_true: np.ndarray, p_positive: np.ndarray, threshold: float = 0.5, *, intervals: bool = False
) -> dict[str, float]:
    """Accuracy, balanced accuracy, ROC AUC, sensitivity, specificity, F1, log loss and calibration
    error (ECE), plus the confusion counts and calibration sums that pool exactly across sites.

    AUC is NaN when the split holds a single class. `intervals` adds 95 % intervals: Wilson for the
    proportions, a case bootstrap for AUC and balanced accuracy.
    """
    from sklearn.metrics import confusion_matrix, log_loss, roc_auc_score  # at sites only (see module)

    y_true = np.asarray(y_true).astype(int)
    if len(y_true) == 0:  # same keys as always, so replies stay consistent across sites
        return {**dict.fromkeys(BINARY_KEYS, math.nan), "tp": 0, "fp": 0, "tn": 0, "fn": 0}
    y_pred = (np.asarray(p_positive) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    auc = roc_auc_score(y_true, p_positive) if len(np.unique(y_true)) == 2 else math.nan
    p = np.clip(np.asarray(p_positive, dtype=np.float64), 1e-7, 1 - 1e-7)
    out = {"roc-auc": float(auc), "loss": float(log_loss(y_true, p, labels=[0, 1]))}
    out.update({"tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn)})
    out.update(_from_counts(tp, fp, tn, fn))
    confidence = np.where(y_pred == 1, p, 1 - p)
    _add_calibration(out, calibration_sums(confidence, y_pred == y_true))
    if intervals:
        _count_intervals(out)
        balanced = balanced_accuracy_batch(threshold)
        with_interval(out, "roc-auc", bootstrap_interval(auc_batch, y_true, p))
        with_interval(out, "balanced-accuracy", bootstrap_interval(balanced, y_true, p))
    return out


def _add_calibration(out: dict[str, float], sums: dict[str, float]) -> None:
    out.update(sums)
    out["ece"] = expected_calibration_error(sums)


def _count_intervals(out: dict[str, float]) -> None:
    """Wilson intervals of the proportions of a binary confusion table."""
    tp, fp, tn, fn = (float(out[k]) for k in ("tp", "fp", "tn", "fn"))
    with_interval(out, "accuracy", wilson_interval(tp + tn, tp + fp + tn + fn))
    with_interval(out, "sensitivity", wilson_interval(tp, tp + fn))
    with_interval(out, "specificity", wilson_interval(tn, tn + fp))


def _from_counts(tp: float, fp: float, tn: float, fn: float) -> dict[str, float]:
    sensitivity, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    return {
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "balanced-accuracy": (sensitivity + specificity) / 2,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def released_sites(per_site: Iterable[dict[str, float]]) -> tuple[list[dict[str, float]], int]:
    """The sites that evaluated someone, and how many sent a suppressed evaluation (NaN
    `num-examples`, common/disclosure.py); sites with an empty split are neither."""
    sites, suppressed = [], 0
    for site in per_site:
        examples = float(site.get("num-examples", 0.0))
        if math.isnan(examples):
            suppressed += 1
        elif examples > 0:
            sites.append(site)
    return sites, suppressed


def _complete(site: dict[str, float], keys: Iterable[str]) -> bool:
    return all(not math.isnan(float(site.get(k, math.nan))) for k in keys)


def pool_binary(per_site: Iterable[dict[str, float]]) -> dict[str, float]:
    """Overall metrics of several sites' evaluations.

    Threshold metrics come from the summed confusion counts (exact, as if pooled) of the sites whose
    tables are complete; `sites-suppressed` counts the others (small cells withheld, or the whole
    evaluation). ROC AUC and loss are averaged weighted by each site's examples, skipping sites where
    they are undefined or withheld; calibration pools the tables the sites released.
    """
    sites, suppressed = released_sites(per_site)
    complete = [s for s in sites if _complete(s, ("tp", "fp", "tn", "fn"))]
    counts = {k: sum(float(s[k]) for s in complete) for k in ("tp", "fp", "tn", "fn")}
    out = _from_counts(counts["tp"], counts["fp"], counts["tn"], counts["fn"])
    out["roc-auc"] = weighted_mean(sites, "roc-auc")
    out["loss"] = weighted_mean(sites, "loss")
    out["num-examples"] = float(sum(float(s["num-examples"]) for s in sites))
    out.update({k: counts[k] for k in ("tp", "fp", "tn", "fn")})
    _count_intervals(out)
    _add_calibration(out, pool_calibration(sites))
    out["sites-suppressed"] = float(suppressed + len(sites) - len(complete))
    return out


def weighted_mean(sites: list[dict[str, float]], key: str, weight: str = "num-examples") -> float:
    """Mean of `key` over sites weighted by `weight`, ignoring NaN values."""
    pairs = [(float(s[key]), float(s[weight])) for s in sites if key in s and not math.isnan(float(s[key]))]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total > 0 else math.nan


def _confusion_keys(site: dict[str, float]) -> list[tuple[int, int]]:
    return [tuple(map(int, k[3:].split("-"))) for k in site if k.startswith("cm-")]


def _from_confusion(cm: np.ndarray) -> dict[str, float]:
    """Accuracy and macro sensitivity, specificity and F1 of a k x k confusion matrix (rows = truth)."""
    total = cm.sum()
    tp = np.diag(cm).astype(float)
    fn = cm.sum(axis=1) - tp
    fp = cm.sum(axis=0) - tp
    tn = total - tp - fn - fp

    def macro(num: np.ndarray, den: np.ndarray) -> float:
        ok = den > 0
        return float(np.mean(num[ok] / den[ok])) if ok.any() else math.nan

    return {
        "accuracy": _ratio(float(tp.sum()), float(total)),
        "balanced-accuracy": macro(tp, tp + fn),
        "sensitivity": macro(tp, tp + fn),  # macro sensitivity = balanced accuracy
        "specificity": macro(tn, tn + fp),
        "f1": macro(2 * tp, 2 * tp + fp + fn),
    }


def multiclass_metrics(y_true: np.ndarray, probs: np.ndarray, *, intervals: bool = False) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro sensitivity/specificity/F1, macro one-vs-rest ROC AUC, log loss
    and ECE of (n, k) probabilities, plus the confusion counts `cm-<true>-<predicted>` and calibration
    sums for exact pooling. `intervals` adds 95 % intervals (Wilson for accuracy, bootstrap for AUC)."""
    from sklearn.metrics import confusion_matrix, log_loss, roc_auc_score  # at sites only (see module)

    y_true = np.asarray(y_true).astype(int)
    k = probs.shape[1]
    cm = confusion_matrix(y_true, probs.argmax(axis=1), labels=list(range(k)))
    present = len(np.unique(y_true)) == k
    auc = roc_auc_score(y_true, probs, multi_class="ovr", labels=list(range(k))) if present else math.nan
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1.0)
    p = p / p.sum(axis=1, keepdims=True)
    out: dict[str, float] = {"roc-auc": float(auc), "loss": float(log_loss(y_true, p, labels=list(range(k))))}
    out.update({f"cm-{i}-{j}": int(cm[i, j]) for i in range(k) for j in range(k)})
    out.update(_from_confusion(cm))
    predicted = probs.argmax(axis=1)
    _add_calibration(out, calibration_sums(probs.max(axis=1), predicted == y_true))
    if intervals:
        with_interval(out, "accuracy", wilson_interval(float(np.trace(cm)), float(cm.sum())))
        with_interval(out, "roc-auc", bootstrap_interval(macro_auc_batch, y_true, np.asarray(probs)))
    return out


def pool_multiclass(per_site: Iterable[dict[str, float]]) -> dict[str, float]:
    """Overall metrics from the summed confusion counts of the sites whose tables are complete
    (exact); AUC and loss example-weighted; `sites-suppressed` as in `pool_binary`."""
    sites, suppressed = released_sites(per_site)
    complete = [s for s in sites if _complete(s, (f"cm-{i}-{j}" for i, j in _confusion_keys(s)))]
    cells = {c for s in sites for c in _confusion_keys(s)}
    k = max((max(i, j) for i, j in cells), default=-1) + 1
    cm = np.zeros((k, k))
    for s in complete:
        for i, j in _confusion_keys(s):
            cm[i, j] += float(s[f"cm-{i}-{j}"])
    out = _from_confusion(cm) if k else {}
    out["roc-auc"] = weighted_mean(sites, "roc-auc")
    out["loss"] = weighted_mean(sites, "loss")
    out["num-examples"] = float(sum(float(s["num-examples"]) for s in sites))
    out.update({f"cm-{i}-{j}": float(cm[i, j]) for i in range(k) for j in range(k)})
    if k:
        with_interval(out, "accuracy", wilson_interval(float(np.trace(cm)), float(cm.sum())))
    _add_calibration(out, pool_calibration(sites))
    out["sites-suppressed"] = float(suppressed + len(sites) - len(complete))
    return out
