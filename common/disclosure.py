"""Small-cell control of a site's evaluation metrics before they leave the site.

`release_evaluation(metrics, k)` applies a minimum cell count k (site policy `min-cell-count`) to what
`Task.evaluate` returned, so that no count a site sends describes between 1 and k - 1 patients:

- k <= 1: the metrics go unchanged.
- A withheld value is NaN, never a missing key: Flower refuses evaluation replies whose metric records
  carry different keys, so every site always sends the same keys (NaN reaches metrics.jsonl as null).
- Fewer than k evaluated patients (0 < `num-examples` < k): every value is NaN, `num-examples` too; a
  NaN `num-examples` is the marker of a suppressed evaluation. An empty split (0) goes as it is.
- Confusion cells (`tp/fp/tn/fn`, `cm-<i>-<j>`) with 0 < count < k are withheld. As `num-examples`
  goes too, one withheld cell would follow from the others, and a few withheld cells would give away
  their small sum; so the smallest released non-zero cells are withheld as well until at least two
  cells are withheld and together they hold >= k patients. When any cell is withheld, every metric
  derived from the cells (accuracy, balanced accuracy, sensitivity, specificity, F1 and their
  `-ci-low/-ci-high`) is withheld, and so is the calibration table with the ECE: its hit counts sum to
  the correct predictions (the diagonal), which would give the withheld diagonal cells back.
- Calibration bins (`cal-<b>-n|conf|hit`): a bin whose patients, correct or wrong predictions number
  between 1 and k - 1 is emptied and its sums are added to the next non-empty bin above it (towards
  confidence 1); when the highest non-empty bin is still short it goes into the nearest non-empty bin
  below, until every released bin holds 0 or >= k of each (else the table is withheld). A merged bin
  keeps the index of the bin that received it; the site's ECE is recomputed from the merged sums.
- Segmentation: `dice` is a mean over `dice-cases` (cases with tumour) and `hd95` over `hd95-cases`
  (cases where both maps have tumour). When the cases with and without tumour are not each 0 or >= k,
  both means, their case counts and intervals are withheld; when those with and without a Dice-and-HD95
  pair are not, HD95 is. Voxel counts (`seg-*`, `dice-voxels`) are sums over all cases and go.
- AUC, loss and ECE over >= k patients go. Keys this module does not know are withheld (k > 1), so a
  new count cannot leave unchecked.

What remains: a withheld cell is not computable, but bounds on it are (e.g. 1..k-1 for a primary one),
as with any cell suppression; AUC and loss are exact statistics of >= k patients, not counts.
"""

from __future__ import annotations

import math
import re

from fedward.common.clinical import expected_calibration_error

WITHHELD = math.nan
BINARY_CELLS = ("tp", "fp", "tn", "fn")
CELL_DERIVED = ("accuracy", "balanced-accuracy", "sensitivity", "specificity", "f1")
_CI = ("-ci-low", "-ci-high")
_MULTI_CELL = re.compile(r"^cm-\d+-\d+$")
_CALIBRATION = re.compile(r"^cal-(\d+)-(n|conf|hit)$")
_SEG_COUNTS = ("seg-tp", "seg-fp", "seg-fn", "dice-voxels")
_PUBLIC = ("site-weight", "site-seconds")  # not about patients: a weight and a duration
_DICE = ("dice", "dice-cases", "dice-ci-low", "dice-ci-high")
_HD95 = ("hd95", "hd95-cases", "hd95-ci-low", "hd95-ci-high")
_KNOWN = {"num-examples", "loss", "roc-auc", "ece", *BINARY_CELLS, *CELL_DERIVED, *_SEG_COUNTS, *_PUBLIC}
_KNOWN |= {*_DICE, *_HD95} | {m + ci for m in (*CELL_DERIVED, "roc-auc") for ci in _CI}


def release_evaluation(metrics: dict[str, float], min_cell: int) -> dict[str, float]:
    """The evaluation metrics a site may send under minimum cell count `min_cell` (same keys)."""
    if min_cell <= 1:
        return dict(metrics)
    out = {key: float(value) for key, value in metrics.items()}
    examples = out.get("num-examples", math.nan)
    if not (examples == 0 or examples >= min_cell):
        return dict.fromkeys(out, WITHHELD)
    _withhold(out, [key for key in out if not _known(key)])
    cells = [key for key in out if key in BINARY_CELLS or _MULTI_CELL.match(key)]
    hidden = withheld_cells({key: out[key] for key in cells}, min_cell)
    if hidden:
        derived = [m + ci for m in CELL_DERIVED for ci in ("", *_CI)]
        calibration = [key for key in out if _CALIBRATION.match(key)]
        _withhold(out, [*hidden, *derived, *calibration, "ece"])
    else:
        _merge_calibration(out, min_cell)
    if "dice-cases" in out:
        _release_segmentation(out, min_cell)
    return out


def withheld_cells(cells: dict[str, float], min_cell: int) -> set[str]:
    """The cells to withhold: those with 1..k-1 patients, plus the smallest others until at least
    two are withheld holding >= k patients together (so the total cannot give one or their sum back)."""
    hidden = {key for key, count in cells.items() if 0 < count < min_cell}
    if not hidden:
        return hidden
    others = sorted((count, key) for key, count in cells.items() if key not in hidden and count > 0)
    while others and (len(hidden) < 2 or sum(cells[key] for key in hidden) < min_cell):
        hidden.add(others.pop(0)[1])
    return hidden


def _known(key: str) -> bool:
    return key in _KNOWN or bool(_MULTI_CELL.match(key) or _CALIBRATION.match(key))


def _withhold(out: dict[str, float], keys: list[str] | set[str]) -> None:
    for key in keys:
        if key in out:
            out[key] = WITHHELD


def _short(n: float, hit: float, min_cell: int) -> bool:
    return any(0 < count < min_cell for count in (n, hit, n - hit))


def _merge_calibration(out: dict[str, float], min_cell: int) -> None:
    """Merge short calibration bins upwards (the highest downwards); recompute the ECE."""
    bins = sorted({int(m[1]) for key in out if (m := _CALIBRATION.match(key))})
    if not bins:
        return
    sums = {b: [out.get(f"cal-{b}-{part}", 0.0) for part in ("n", "conf", "hit")] for b in bins}
    carry = [0.0, 0.0, 0.0]
    for position, b in enumerate(bins):
        sums[b] = [x + c for x, c in zip(sums[b], carry, strict=True)]
        carry = [0.0, 0.0, 0.0]
        later = any(sums[c][0] > 0 for c in bins[position + 1 :])
        if later and _short(sums[b][0], sums[b][2], min_cell):
            carry, sums[b] = sums[b], [0.0, 0.0, 0.0]
    filled = [b for b in bins if sums[b][0] > 0]
    while len(filled) > 1 and _short(sums[filled[-1]][0], sums[filled[-1]][2], min_cell):
        top, below = filled.pop(), filled[-1]
        sums[below] = [x + y for x, y in zip(sums[below], sums[top], strict=True)]
        sums[top] = [0.0, 0.0, 0.0]
    if filled and _short(sums[filled[0]][0], sums[filled[0]][2], min_cell):
        _withhold(out, [key for key in out if _CALIBRATION.match(key)] + ["ece"])
        return
    for b in bins:
        for part, value in zip(("n", "conf", "hit"), sums[b], strict=True):
            out[f"cal-{b}-{part}"] = value
    if "ece" in out:
        out["ece"] = expected_calibration_error(out, bins=max(bins) + 1)


def _release_segmentation(out: dict[str, float], min_cell: int) -> None:
    """Withhold the per-case means whose case counts (or their complements) are small."""
    cases, tumour, both = out["num-examples"], out["dice-cases"], out.get("hd95-cases", 0.0)
    if any(0 < count < min_cell for count in (tumour, cases - tumour)):
        _withhold(out, [*_DICE, *_HD95])
    elif any(0 < count < min_cell for count in (both, tumour - both)):
        _withhold(out, _HD95)
