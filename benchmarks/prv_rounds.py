"""What composing a site's ε costs round by round: Opacus' PRV accountant as shipped against the shared
domain fedward composes on (common/prv_composition.py), over the histories a private run really has.

Per run shape (statistics release σ 6 at q = 1, then `rounds` rounds of `steps` DP-SGD steps at rate
1/steps with σ calibrated for ε 3 over the run, δ 1e-3): the ε after each round composed both ways, arms
interleaved round by round, each arm's caches emptied at the start of the run (as in a new site process):
seconds per round (median, max, total over the run) and the largest |Δε| between the two.

    python -P benchmarks/prv_rounds.py [--runs 10x4 20x4 50x4 10x25] [--delta 1e-3]

Writes benchmarks/results/prv_rounds.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

from opacus.accountants import PRVAccountant

from fedward.common import privacy, prv_composition

OUT = Path("benchmarks/results/prv_rounds.json")
RELEASE = (6.0, 1.0, 1)


def _opacus(history: list[tuple[float, float, int]], delta: float) -> float:
    accountant = PRVAccountant()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta))


def one_run(rounds: int, steps: int, delta: float) -> dict:
    """Both arms over one run's rounds; per-round seconds and the ε gap."""
    sigma = privacy._calibrate_after(3.0, delta, 1 / steps, rounds * steps, "prv", (RELEASE,))
    privacy._compose.cache_clear()
    prv_composition._discretised.cache_clear()
    seconds: dict[str, list[float]] = {"opacus": [], "shared-domain": []}
    gap = 0.0
    for r in range(1, rounds + 1):
        history = [RELEASE, (sigma, 1 / steps, steps * r)]
        start = time.perf_counter()
        theirs = _opacus(history, delta)
        seconds["opacus"].append(time.perf_counter() - start)
        start = time.perf_counter()
        ours = privacy.compose_epsilon(history, delta, "prv")
        seconds["shared-domain"].append(time.perf_counter() - start)
        gap = max(gap, abs(ours - theirs))
    return {
        "rounds": rounds,
        "steps-per-round": steps,
        "sigma": sigma,
        "max-abs-epsilon-gap": gap,
        **{
            arm: {
                "median-ms": 1000 * statistics.median(s),
                "max-ms": 1000 * max(s),
                "total-ms": 1000 * sum(s),
            }
            for arm, s in seconds.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=["10x4", "20x4", "50x4", "10x25"], help="ROUNDSxSTEPS")
    parser.add_argument("--delta", type=float, default=1e-3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # Opacus' PRV at q = 1 (log 0), harmless
    privacy.compose_epsilon([RELEASE], args.delta, "prv")  # imports and first-use costs out of the timing
    results = []
    for shape in args.runs:
        rounds, steps = (int(x) for x in shape.split("x"))
        row = one_run(rounds, steps, args.delta)
        results.append(row)
        o, s = row["opacus"], row["shared-domain"]
        print(
            f"{rounds:3d} rounds x {steps:2d} steps: median {o['median-ms']:.1f} -> {s['median-ms']:.1f} ms "
            f"({o['median-ms'] / s['median-ms']:.1f}x), total {o['total-ms']:.0f} -> {s['total-ms']:.0f} ms, "
            f"max {o['max-ms']:.0f} -> {s['max-ms']:.0f} ms, max |d eps| {row['max-abs-epsilon-gap']:.1e}"
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"delta": args.delta, "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
