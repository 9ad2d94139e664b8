"""Membership-inference metrics: AUC and the true-positive rate at a low false-positive rate (Carlini et
al., "Membership Inference Attacks From First Principles", S&P 2022: report TPR at low FPR, not AUC alone)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

LOW_FPRS = (0.001, 0.01)


def attack_metrics(
    member_scores: Sequence[float], non_member_scores: Sequence[float], fprs: Sequence[float] = LOW_FPRS
) -> dict:
    """AUC and TPR at each FPR of `fprs` for scores where higher means "member".

    A TPR at an FPR below 1 / (number of non-members) cannot be measured: it is None, and the counts are
    reported so that a reader can judge the resolution.
    """
    members = np.asarray(member_scores, dtype=np.float64)
    others = np.asarray(non_member_scores, dtype=np.float64)
    if not len(members) or not len(others):
        raise ValueError("membership inference needs at least one member and one non-member")
    labels = np.r_[np.ones(len(members)), np.zeros(len(others))]
    scores = np.r_[members, others]
    fpr, tpr, _ = roc_curve(labels, scores)
    at = {}
    for target in fprs:
        measurable = target >= 1.0 / len(others)
        at[f"{target:g}"] = float(np.max(tpr[fpr <= target])) if measurable else None
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "tpr-at-fpr": at,
        "members": len(members),
        "non-members": len(others),
    }
