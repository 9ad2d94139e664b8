"""Evaluation releases under a minimum cell count (common/disclosure.py) and pooling what was released."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from flower_fakes import flower_identity  # noqa: F401 (fixture)
from inprocess_grid import InProcessGrid, ckd_run_config, run_server
from site_policy import policy_text

from fedward.client.policy import load_policy, min_cell_count
from fedward.common.clinical import calibration_sums, expected_calibration_error
from fedward.common.config import RunConfig
from fedward.common.disclosure import BINARY_CELLS, CELL_DERIVED, release_evaluation
from fedward.common.errors import ConfigError
from fedward.common.metrics import binary_metrics, multiclass_metrics, pool_binary, pool_multiclass
from fedward.common.seg_metrics import pool_segmentation
from fedward.common.tasks import get_task
from fedward.server.report.data import RunData, pooled_confusion
from fedward.server.report.model_card import class_counts
from fedward.simulations.prepare import prepare_ckd_sites

K = 10


def _binary(tp: int, fp: int, tn: int, fn: int, seed: int = 0, intervals: bool = False) -> dict[str, float]:
    """binary_metrics of predictions with exactly these confusion counts (spread confidences)."""
    rng = np.random.default_rng(seed)
    y = np.array([1] * tp + [0] * fp + [0] * tn + [1] * fn)
    predicted = np.array([1] * tp + [1] * fp + [0] * tn + [0] * fn)
    confidence = rng.uniform(0.5, 1.0, len(y))
    p = np.where(predicted == 1, confidence, 1 - confidence)
    out = binary_metrics(y, p, intervals=intervals)
    out["num-examples"] = float(len(y))
    return {k: float(v) for k, v in out.items()}


def _multiclass(cm: np.ndarray, seed: int = 0) -> dict[str, float]:
    """multiclass_metrics of predictions with exactly this confusion matrix (rows = truth)."""
    rng = np.random.default_rng(seed)
    k = cm.shape[0]
    y, probs = [], []
    for i, j in itertools.product(range(k), range(k)):
        for _ in range(int(cm[i, j])):
            row = rng.uniform(0, 1, k)
            row[j] += rng.uniform(1.0, 4.0)  # j wins the argmax
            y.append(i)
            probs.append(row / row.sum())
    out = multiclass_metrics(np.array(y), np.array(probs))
    out["num-examples"] = float(len(y))
    return {k: float(v) for k, v in out.items()}


def _cells(m: dict[str, float]) -> list[str]:
    return [k for k in m if k in BINARY_CELLS or k.startswith("cm-")]


def _assert_no_small_cell(released: dict[str, float], original: dict[str, float], k: int) -> None:
    assert released.keys() == original.keys()  # Flower needs the same keys from every site
    if math.isnan(released["num-examples"]):
        assert all(math.isnan(v) for v in released.values())
        return
    assert released["num-examples"] >= k
    cells = _cells(released)
    hidden = [c for c in cells if math.isnan(released[c])]
    for c in cells:
        assert math.isnan(released[c]) or released[c] == 0 or released[c] >= k, c
    if hidden:
        assert len(hidden) >= 2
        assert released["num-examples"] - sum(released[c] for c in cells if c not in hidden) >= k
        derived = [m + s for m in CELL_DERIVED for s in ("", "-ci-low", "-ci-high")]
        withheld = [*derived, "ece"] + [c for c in released if c.startswith("cal-")]
        assert all(math.isnan(released[m]) for m in withheld if m in released)
    bins = sorted({int(c.split("-")[1]) for c in released if c.startswith("cal-")})
    for b in bins:
        n, hit = released[f"cal-{b}-n"], released[f"cal-{b}-hit"]
        if not math.isnan(n):
            assert all(c == 0 or c >= k for c in (n, hit, n - hit)), (b, n, hit)


@pytest.mark.parametrize("k", [5, K])
def test_every_released_binary_cell_is_zero_or_at_least_k(k: int) -> None:
    for seed, counts in enumerate(itertools.product([0, 1, 4, 12, 40], repeat=4)):
        if sum(counts) == 0:
            continue
        original = _binary(*counts, seed=seed)
        _assert_no_small_cell(release_evaluation(original, k), original, k)


def test_every_released_multiclass_cell_is_zero_or_at_least_k() -> None:
    rng = np.random.default_rng(1)
    for seed in range(40):
        cm = rng.choice([0, 0, 1, 3, 11, 25], size=(3, 3))
        cm[np.diag_indices(3)] += 12
        original = _multiclass(cm, seed=seed)
        _assert_no_small_cell(release_evaluation(original, K), original, K)


def _recover(released: dict[str, float]) -> dict[str, float]:
    """What an attacker at the coordinator computes for withheld cells from everything a site sent."""
    n = released["num-examples"]
    cells = {c: released[c] for c in ("tp", "fp", "tn", "fn")}
    missing = [c for c, v in cells.items() if math.isnan(v)]
    known = {c: v for c, v in cells.items() if not math.isnan(v)}
    found: dict[str, float] = {}
    if len(missing) == 1:  # the total gives the last cell
        found[missing[0]] = n - sum(known.values())
    hits = sum(released[f"cal-{b}-hit"] for b in range(10))
    diagonal = [c for c in ("tp", "tn") if c in missing]
    if len(diagonal) == 1 and not math.isnan(hits):  # calibration hits sum to tp + tn
        other = "tn" if diagonal[0] == "tp" else "tp"
        found[diagonal[0]] = hits - known[other]
    if len(diagonal) == 1 and not math.isnan(released["accuracy"]):
        other = "tn" if diagonal[0] == "tp" else "tp"
        found[diagonal[0]] = round(released["accuracy"] * n) - known[other]
    return found


def _naive(metrics: dict[str, float], k: int) -> dict[str, float]:
    """Withholding only the small cells themselves (what the attack test must defeat)."""
    return {c: math.nan if c in BINARY_CELLS and 0 < v < k else v for c, v in metrics.items()}


@pytest.mark.parametrize("counts", [(30, 12, 55, 3), (4, 12, 60, 14), (2, 1, 70, 1)])
def test_withheld_cells_cannot_be_computed_from_what_is_sent(counts: tuple[int, int, int, int]) -> None:
    original = _binary(*counts, intervals=True)
    truth = dict(zip(("tp", "fp", "tn", "fn"), map(float, counts), strict=True))
    naive = _naive(original, K)
    assert any(truth[c] == v for c, v in _recover(naive).items())  # the attack works on naive suppression
    released = release_evaluation(original, K)
    assert _recover(released) == {}
    # every table of withheld cells with the released total is consistent with what was sent
    hidden = [c for c in BINARY_CELLS if math.isnan(released[c])]
    rest = released["num-examples"] - sum(released[c] for c in BINARY_CELLS if c not in hidden)
    for cell in hidden:
        assert truth[cell] < rest  # the cell can take other values: some other cell holds patients
    assert all(math.isnan(released[m]) for m in (*CELL_DERIVED, "ece", "cal-9-hit", "accuracy-ci-low"))


def test_k_one_or_zero_leaves_metrics_unchanged() -> None:
    original = _binary(3, 1, 20, 2)
    assert release_evaluation(original, 1) == original
    assert release_evaluation(original, 0) == original


def test_fewer_than_k_patients_sends_only_the_suppressed_marker() -> None:
    released = release_evaluation(_binary(3, 1, 2, 2), K)
    assert all(math.isnan(v) for v in released.values())
    empty = {"num-examples": 0.0}
    assert release_evaluation(empty, K) == empty


def test_a_key_the_release_does_not_know_is_withheld() -> None:
    original = {**_binary(20, 10, 30, 10), "positives": 30.0, "site-weight": 1.0}
    released = release_evaluation(original, K)
    assert math.isnan(released["positives"])
    assert released["site-weight"] == 1.0 and released["tp"] == 20


def test_short_calibration_bins_merge_upwards_and_ece_is_recomputed() -> None:
    confidence = np.array([0.55] * 3 + [0.75] * 12 + [0.95] * 30)
    correct = np.array([True] * 3 + [True] * 12 + [True] * 20 + [False] * 10)
    sums = calibration_sums(confidence, correct)
    original = {**sums, "ece": expected_calibration_error(sums), "num-examples": 45.0, "loss": 0.3}
    released = release_evaluation(original, K)
    assert released["cal-5-n"] == 0 and released["cal-7-n"] == 15  # 0.55 went up into the 0.75 bin
    assert released["cal-9-n"] == 30 and released["cal-9-hit"] == 20
    for part in ("n", "conf", "hit"):
        assert sum(released[f"cal-{b}-{part}"] for b in range(10)) == pytest.approx(
            sum(sums[f"cal-{b}-{part}"] for b in range(10))
        )
    assert released["ece"] == pytest.approx(expected_calibration_error(released))
    assert released["ece"] <= original["ece"] + 1e-12


def test_a_short_top_bin_merges_downwards() -> None:
    confidence = np.array([0.65] * 20 + [0.95] * 4)
    sums = calibration_sums(confidence, np.ones(24, dtype=bool))
    released = release_evaluation({**sums, "num-examples": 24.0}, K)
    assert released["cal-9-n"] == 0 and released["cal-6-n"] == 24


def test_segmentation_means_over_few_cases_are_withheld() -> None:
    seg = {"dice": 0.8, "dice-cases": 25.0, "hd95": 4.0, "hd95-cases": 15.0, "seg-tp": 900.0,
           "seg-fp": 100.0, "seg-fn": 50.0, "dice-voxels": 0.9, "loss": 0.2,
           "num-examples": 30.0}  # fmt: skip
    released = release_evaluation(seg, K)  # 5 cases without tumour: Dice and its count would say so
    assert all(math.isnan(released[k]) for k in ("dice", "dice-cases", "hd95", "hd95-cases"))
    assert released["seg-tp"] == 900 and released["dice-voxels"] == 0.9
    released = release_evaluation({**seg, "dice-cases": 20.0, "num-examples": 40.0}, K)
    assert released["dice"] == 0.8 and math.isnan(released["hd95"]) and math.isnan(released["hd95-cases"])
    pooled = pool_segmentation([released, release_evaluation({**seg, "num-examples": 5.0}, K), seg])
    assert pooled["sites-suppressed"] == 1  # the 5-case site; the 40-case site kept Dice
    assert pooled["dice-cases"] == 45 and pooled["hd95-cases"] == 15 and pooled["hd95"] == 4.0


def test_pooling_uses_complete_tables_and_counts_the_sites_left_out() -> None:
    complete, partial = _binary(20, 10, 30, 10, seed=1), _binary(30, 12, 55, 3, seed=2)
    small = _binary(2, 1, 3, 1)
    released = [release_evaluation(m, K) for m in (complete, partial, small)]
    pooled = pool_binary(released)
    assert pooled["sites-suppressed"] == 2
    assert [pooled[c] for c in ("tp", "fp", "tn", "fn")] == [20, 10, 30, 10]
    assert pooled["accuracy"] == pytest.approx(50 / 70)
    assert pooled["num-examples"] == 170
    expected_auc = (complete["roc-auc"] * 70 + partial["roc-auc"] * 100) / 170
    assert pooled["roc-auc"] == pytest.approx(expected_auc)
    assert pooled["ece"] == pytest.approx(expected_calibration_error(released[0]))
    # the tasks' pool functions count suppressed sites too, whichever site comes first
    assert get_task("ckd").pool(released)["sites-suppressed"] == 2
    tumour = get_task("tumour").pool([released[2], released[1], released[0]])
    assert tumour["sites-suppressed"] == 2 and tumour["tp"] == 20
    assert pool_binary([complete, partial])["sites-suppressed"] == 0


def test_multiclass_pooling_with_a_suppressed_table() -> None:
    full = _multiclass(np.array([[20, 0, 10], [0, 15, 0], [10, 0, 25]]))
    partial = _multiclass(np.array([[20, 2, 10], [0, 15, 0], [10, 0, 25]]), seed=3)
    released = [release_evaluation(m, K) for m in (full, partial)]
    pooled = pool_multiclass(released)
    assert pooled["sites-suppressed"] == 1 and pooled["cm-0-0"] == 20 and pooled["num-examples"] == 162
    assert pooled["accuracy"] == pytest.approx(60 / 80)


def test_model_card_class_counts_skip_withheld_cells() -> None:
    assert class_counts({"tp": None, "fn": 12.0, "tn": 40.0, "fp": 0.0}) is None
    assert class_counts({"cm-0-0": 20.0, "cm-0-1": math.nan, "cm-1-0": 0.0, "cm-1-1": 30.0}) is None


def test_report_confusion_sums_only_complete_tables(tmp_path: Path) -> None:
    complete = {"tp": 20.0, "fp": 10.0, "tn": 30.0, "fn": 10.0}
    withheld = {"tp": None, "fp": None, "tn": 55.0, "fn": None}  # NaN is written as null
    sites = {"a": {"evaluate": complete}, "b": {"evaluate": withheld}}
    run = RunData(tmp_path, {"task": "ckd"}, {}, [], {"task": "ckd", "sites": sites}, None)
    matrix, _ = pooled_confusion(run)
    assert matrix.tolist() == [[30.0, 10.0], [10.0, 20.0]]


POLICY = policy_text(8.0, 1e-4)


def test_policy_min_cell_count(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    default = load_policy(path)
    assert default.min_cell_count == 10
    assert min_cell_count(None, RunConfig()) == 0  # simulations without a policy: exact unless set
    assert min_cell_count(None, RunConfig(min_cell_count=5)) == 5
    assert min_cell_count(default, RunConfig()) == 10
    assert min_cell_count(default, RunConfig(min_cell_count=20)) == 20  # the stricter wins
    path.write_text(POLICY + "min-cell-count = 3\n")
    assert min_cell_count(load_policy(path), RunConfig()) == 3
    for bad in ("0", '"10"', "2.5"):
        path.write_text(POLICY + f"min-cell-count = {bad}\n")
        with pytest.raises(ConfigError, match=r"policy\.min-cell-count"):
            load_policy(path)


@pytest.mark.usefixtures("flower_identity")
def test_a_federation_with_small_cells_runs_and_reports_the_sites_left_out(tmp_path: Path) -> None:
    """Flower refuses evaluation replies with different keys: withheld values travel as NaN."""
    sites = tmp_path / "sites"
    prepare_ckd_sites(sites, 3, "iid")
    config = ckd_run_config(
        sites,
        tmp_path / "runs",
        **{"num-server-rounds": 1, "min-sites": 3, "dp": False, "min-cell-count": 10},
    )
    grid = InProcessGrid(config, 3)
    run_server(grid, config)
    evaluations = [r for r in grid.replies if r.metadata.message_type == "evaluate"]
    assert len(evaluations) == 3 and not any(r.has_error() for r in evaluations)
    assert len({tuple(sorted(r.content["metrics"].keys())) for r in evaluations}) == 1
    run = next((tmp_path / "runs").glob("*/"))
    summary = json.loads((run / "summary.json").read_text())
    sent = [dict(r.content["metrics"]) for r in evaluations]
    suppressed = sum(1 for m in sent if any(math.isnan(m[c]) for c in BINARY_CELLS))
    assert suppressed > 0 and summary["overall"]["sites-suppressed"] == suppressed
    assert f"{suppressed} site(s) withheld small cells" in (run / "MODEL_CARD.md").read_text()
