"""Segmentation metrics at a site (Dice and HD95 with monai.metrics) and their pooling across sites."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.networks.utils import one_hot

from fedward.common.clinical import mean_interval, with_interval
from fedward.common.metrics import released_sites, weighted_mean


def segmentation_metrics(
    pred: torch.Tensor, target: torch.Tensor, spacings: Sequence[Sequence[float]], *, intervals: bool = False
) -> dict[str, float]:
    """Tumour Dice and HD95 (mm) of label maps `pred`, `target` of shape (n, 1, ...).

    `dice` averages cases with tumour in the ground truth; `hd95` cases where both maps have tumour;
    `dice-voxels` comes from the summed voxel counts `seg-tp`, `seg-fp`, `seg-fn` (exact when pooled).
    `intervals` adds bootstrap 95 % intervals of the case means (`dice-ci-low`, ...).
    """
    pred_oh, target_oh = one_hot(pred.long(), 2), one_hot(target.long(), 2)
    dice = compute_dice(pred_oh, target_oh, include_background=False, ignore_empty=True)[:, 0].numpy()
    both = (pred.flatten(1).sum(1) > 0) & (target.flatten(1).sum(1) > 0)
    hd = np.full(len(pred), np.nan)
    if both.any():
        idx = torch.nonzero(both).flatten()
        with warnings.catch_warnings():  # MONAI 1.6 passes its own deprecated argument internally
            warnings.simplefilter("ignore", FutureWarning)
            values = compute_hausdorff_distance(
                pred_oh[idx],
                target_oh[idx],
                percentile=95,
                spacing=[list(map(float, spacings[i])) for i in idx],
            )
        hd[idx.numpy()] = values[:, 0].numpy()
    tp = float((pred.bool() & target.bool()).sum())
    fp = float((pred.bool() & ~target.bool()).sum())
    fn = float((~pred.bool() & target.bool()).sum())
    ok_dice, ok_hd = ~np.isnan(dice), np.isfinite(hd)
    out = {
        "dice": float(dice[ok_dice].mean()) if ok_dice.any() else math.nan,
        "dice-cases": float(ok_dice.sum()),
        "hd95": float(hd[ok_hd].mean()) if ok_hd.any() else math.nan,
        "hd95-cases": float(ok_hd.sum()),
        "seg-tp": tp,
        "seg-fp": fp,
        "seg-fn": fn,
        "dice-voxels": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else math.nan,
    }
    if intervals:
        with_interval(out, "dice", mean_interval(dice[ok_dice]))
        with_interval(out, "hd95", mean_interval(hd[ok_hd]))
    return out


def pool_segmentation(per_site: list[dict[str, float]]) -> dict[str, float]:
    """Case-weighted Dice and HD95, exact voxel Dice from summed counts, example-weighted loss.

    Means a site withheld (NaN, common/disclosure.py) are left out; `sites-suppressed` counts the
    sites left out of Dice (a small case count or the whole evaluation withheld)."""
    sites, suppressed = released_sites(per_site)
    tp, fp, fn = (sum(float(s[k]) for s in sites) for k in ("seg-tp", "seg-fp", "seg-fn"))
    dice_sites = [s for s in sites if not math.isnan(float(s.get("dice-cases", math.nan)))]
    return {
        "dice": weighted_mean(sites, "dice", "dice-cases"),
        "hd95": weighted_mean(sites, "hd95", "hd95-cases"),
        "dice-voxels": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else math.nan,
        "loss": weighted_mean(sites, "loss"),
        "num-examples": float(sum(float(s["num-examples"]) for s in sites)),
        "dice-cases": _finite_sum(sites, "dice-cases"),
        "hd95-cases": _finite_sum(sites, "hd95-cases"),
        "seg-tp": tp,
        "seg-fp": fp,
        "seg-fn": fn,
        "sites-suppressed": float(suppressed + len(sites) - len(dice_sites)),
    }


def _finite_sum(sites: list[dict[str, float]], key: str) -> float:
    return float(sum(v for s in sites if not math.isnan(v := float(s.get(key, math.nan)))))
