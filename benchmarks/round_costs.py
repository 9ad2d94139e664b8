"""What the last round and a private round cost a site, before and after issue 16's vectorised intervals
and cached ε composition, measured in one process with the arms interleaved.

(a) Final-round evaluation: a site's evaluation of the global model without intervals (an ordinary
round), with the vectorised intervals (now), and with the per-resample bootstrap sites ran before (kept
here as the baseline: 1000 sklearn AUC and balanced-accuracy calls), on a CKD site's held-out split
(site-0 of the default 3-site split, through the real CKD loader, model and `Task.evaluate`) and on a
500-case split of synthetic scores.

(b) ε composition at round r of a CKD site's run (statistics release + r rounds of DP-SGD, PRV): what a
round composed before (a fresh Opacus accountant run per ε the round reported: the run's and the
lifetime ε, plus the policy check's projection at a site with a policy) against now (one grouped, cached
composition whose per-step RDP is memoised from round 1; the other asks hit the cache), and a cache hit
alone. Rounds r-repeats+1 .. r give each repeat a history not composed before, as in a run.

    python -P benchmarks/round_costs.py [--repeats 7] [--rounds 10 50]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import TensorDataset

from fedward.common.config import RunConfig
from fedward.common.data.ckd import load_ckd_csv
from fedward.common.metrics import binary_metrics
from fedward.common.privacy import compose_epsilon
from fedward.common.tasks import get_task
from fedward.simulations.prepare import prepare_ckd_sites

OUT = Path("benchmarks/results/round_costs.json")
STATISTICS = (6.0, 1.0, 1)  # the default statistics release, one Gaussian step
SIGMA, STEPS_PER_ROUND = 1.2, 7  # a CKD site of the 3-site split: q = 1/7, one local epoch
DELTA = 1e-3


# ------------------------------------------------------------------ the baseline: before issue 16


def _old_bootstrap(statistic: Callable, y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """The per-resample percentile bootstrap common/clinical.py ran before."""
    index = np.random.default_rng(0).integers(0, len(y), size=(1000, len(y)))

    def safe(yy: np.ndarray, ss: np.ndarray) -> float:
        try:
            return statistic(yy, ss)
        except ValueError:
            return math.nan

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = np.array([safe(y[i], s[i]) for i in index])
    values = values[np.isfinite(values)]
    if len(values) < 500:
        return math.nan, math.nan
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def _old_balanced(y: np.ndarray, p: np.ndarray) -> float:
    pred = p >= 0.5
    if y.all() or not y.any():
        return math.nan
    return float((pred[y == 1].mean() + (~pred[y == 0]).mean()) / 2)


def _old_intervals(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """binary_metrics(intervals=True) as it was: the Wilson intervals (unchanged) and two loops."""
    out = binary_metrics(y, p, intervals=True)  # today's, for the unchanged parts
    clipped = np.clip(p, 1e-7, 1 - 1e-7)
    out["roc-auc-ci-low"], out["roc-auc-ci-high"] = _old_bootstrap(roc_auc_score, y, clipped)
    low_high = _old_bootstrap(_old_balanced, y, clipped)
    out["balanced-accuracy-ci-low"], out["balanced-accuracy-ci-high"] = low_high
    return out


@contextlib.contextmanager
def _opacus_as_shipped() -> Iterator[None]:
    """Opacus' own per-step RDP computation, without common/privacy.py's memo, for the baseline arm."""
    from opacus.accountants.analysis import rdp

    memo = rdp.compute_rdp
    rdp.compute_rdp = getattr(memo, "original", memo)
    try:
        yield
    finally:
        rdp.compute_rdp = memo


def _old_compose(entries: list[tuple[float, float, int]]) -> float:
    """compose_epsilon as it was: a fresh accountant over the history, nothing kept."""
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism="prv")
    acc.history = list(entries)
    with warnings.catch_warnings(), _opacus_as_shipped():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=DELTA))


# ------------------------------------------------------------------ (a) final-round evaluation


def _ckd_split(folder: Path) -> tuple[torch.nn.Module, TensorDataset]:
    """Site-0's held-out split of the default 3-site CKD split and a model trained a little on its rows."""
    prepare_ckd_sites(folder, 3, "iid", seed=0)
    train, test = (
        load_ckd_csv(folder / "site-0" / f"{part}.csv", strict=False) for part in ("train", "test")
    )
    mean = np.nanmean(train.x, axis=0)
    std = np.nanstd(train.x, axis=0) + 1e-6

    def tensors(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.nan_to_num((x - mean) / std).astype(np.float32))

    model = get_task("ckd").build_model(RunConfig())
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = tensors(train.x), torch.from_numpy(train.y)
    for _ in range(20):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    return model, TensorDataset(tensors(test.x), torch.from_numpy(test.y))


def _synthetic(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, n)
    return y, 1 / (1 + np.exp(-(1.5 * (2 * y - 1) + rng.normal(0, 1.5, n))))


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def evaluation_costs(repeats: int) -> dict[str, dict]:
    """Median seconds of one site's evaluation per arm, per split."""
    task, cpu = get_task("ckd"), torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        model, test = _ckd_split(Path(tmp))
    y500, p500 = _synthetic(500)

    def ckd_old() -> None:  # the same prediction, then the old interval code
        probs = torch.softmax(model(test.tensors[0]), dim=1)[:, 1].detach().numpy()
        _old_intervals(test.tensors[1].numpy(), probs)

    splits = {
        f"ckd-site ({len(test)} cases)": {
            "ordinary": lambda: task.evaluate(model, test, cpu),
            "final-now": lambda: task.evaluate(model, test, cpu, intervals=True),
            "final-before": ckd_old,
        },
        "500 cases": {
            "ordinary": lambda: binary_metrics(y500, p500),
            "final-now": lambda: binary_metrics(y500, p500, intervals=True),
            "final-before": lambda: _old_intervals(y500, p500),
        },
    }
    results = {}
    for split, arms in splits.items():
        for call in arms.values():  # warm-up
            call()
        times: dict[str, list[float]] = {arm: [] for arm in arms}
        for _ in range(repeats):  # interleaved, so load hits every arm alike
            for arm, call in arms.items():
                times[arm].append(_timed(call))
        median = {arm: statistics.median(t) for arm, t in times.items()}
        results[split] = {
            "median-seconds": median,
            "final-now / ordinary": median["final-now"] / median["ordinary"],
            "final-before / ordinary": median["final-before"] / median["ordinary"],
            "speed-up": median["final-before"] / median["final-now"],
        }
    return results


# ------------------------------------------------------------------ (b) ε composition


def _history(rounds: int) -> list[tuple[float, float, int]]:
    return [STATISTICS, (SIGMA, 1 / STEPS_PER_ROUND, STEPS_PER_ROUND * rounds)]


def composition_costs(rounds: list[int], repeats: int) -> dict[str, dict]:
    """Median seconds of the ε work of round r: before (2 or 3 fresh compositions) and now."""
    first = _timed(lambda: compose_epsilon(_history(1), DELTA))  # round 1: fills the per-step RDP memo
    results: dict[str, dict] = {"round-1-now (memo filled)": {"seconds": first}}
    for r in rounds:
        before, now, hit = [], [], []
        for k in range(repeats):  # a history no earlier repeat composed, as in a run
            history = _history(r - k)
            before.append(_timed(lambda h=history: _old_compose(h)))
            now.append(_timed(lambda h=history: compose_epsilon(h, DELTA)))
            hit.append(_timed(lambda h=history: compose_epsilon(h, DELTA)))
            assert math.isclose(_old_compose(history), compose_epsilon(history, DELTA), rel_tol=1e-9)
        one_fresh, one_now, one_hit = (statistics.median(t) for t in (before, now, hit))
        results[f"round {r}"] = {
            "steps": STEPS_PER_ROUND * r + 1,
            "median-seconds": {
                "fresh composition": one_fresh,
                "cached (miss)": one_now,
                "cache hit": one_hit,
            },
            "round before, no policy (2 fresh)": 2 * one_fresh,
            "round now, no policy (1 miss + 1 hit)": one_now + one_hit,
            "round before, policy (3 fresh)": 3 * one_fresh,
            "round now, policy (1 miss + 2 hits)": one_now + 2 * one_hit,
            "speed-up, no policy": 2 * one_fresh / (one_now + one_hit),
            "speed-up, policy": 3 * one_fresh / (one_now + 2 * one_hit),
        }
    return results


def main() -> None:
    """Measure both parts, print medians and ratios, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    report = {
        "repeats": args.repeats,
        "evaluation": evaluation_costs(args.repeats),
        "epsilon-composition": composition_costs(args.rounds, args.repeats),
    }
    for split, row in report["evaluation"].items():
        m = row["median-seconds"]
        print(
            f"evaluation, {split}: ordinary {m['ordinary'] * 1e3:.1f} ms, "
            f"final now {m['final-now'] * 1e3:.1f} ms"
            f" ({row['final-now / ordinary']:.2f}x), final before {m['final-before'] * 1e3:.0f} ms"
            f" ({row['final-before / ordinary']:.0f}x); speed-up {row['speed-up']:.0f}x"
        )
    for name, row in report["epsilon-composition"].items():
        if "seconds" in row:
            print(f"epsilon, {name}: {row['seconds'] * 1e3:.0f} ms")
            continue
        m = row["median-seconds"]
        before, now = row["round before, no policy (2 fresh)"], row["round now, no policy (1 miss + 1 hit)"]
        print(
            f"epsilon, {name} ({row['steps']} steps): fresh {m['fresh composition'] * 1e3:.0f} ms, "
            f"cached miss {m['cached (miss)'] * 1e3:.0f} ms, hit {m['cache hit'] * 1e6:.0f} µs; "
            f"a site's round "
            f"{before * 1e3:.0f} -> {now * 1e3:.0f} ms ({row['speed-up, no policy']:.1f}x; with a policy "
            f"{row['speed-up, policy']:.1f}x)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
