"""Sweeps: one scenario over a grid of values of one key, several seeds each, mean ± sd and a plot.

`fedward sim sweep SCENARIO --over epsilon=0.5,1,3,8,inf --seeds 3` runs every value × seed as its
own study (run `<scenario>-<key>-<value>-s<seed>` under the sweep folder), then writes
`sweep.json` (every run's final metric per arm, and mean ± sd per value) and `sweep.png`.
`epsilon = inf` means DP off. A run folder that already holds results is reused, so an interrupted
sweep resumes where it stopped; a run that fails is recorded with its error and the sweep goes on.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedward.common.errors import ConfigError, FedwardError
from fedward.server.rundir import json_safe
from fedward.simulations.report import ARMS
from fedward.simulations.scenario import SWEEP_KEYS, Scenario

RunOne = Callable[[Scenario, Path], dict[str, Any]]
"""Runs one scenario into a run folder and returns its comparison (simulations/study.py layout)."""

AXIS_LABELS = {
    "epsilon": "target ε per site",
    "strategy": "aggregation strategy",
    "alpha": "Dirichlet α (label skew; smaller = more skew)",
    "sites": "number of sites",
    "rounds": "federated rounds",
}


@dataclass(frozen=True)
class SweepPoint:
    """One run of the grid."""

    value: str
    seed: int
    run_name: str


def parse_over(text: str) -> tuple[str, list[str]]:
    """`"epsilon=0.5,1,3,8,inf"` -> ("epsilon", ["0.5", "1", "3", "8", "inf"])."""
    key, sep, rest = text.partition("=")
    key = key.strip()
    values = [v.strip() for v in rest.split(",") if v.strip()]
    if not sep or key not in SWEEP_KEYS:
        raise ConfigError(f"--over {text!r}: expected KEY=V1,V2,... with KEY one of {', '.join(SWEEP_KEYS)}")
    if not values:
        raise ConfigError(f"--over {text!r}: no values after '='")
    if len(set(values)) != len(values):
        raise ConfigError(f"--over {text!r}: a value appears twice")
    return key, values


def sweep_points(scenario_name: str, key: str, values: list[str], seeds: list[int]) -> list[SweepPoint]:
    """Every value × seed, with its run name `<scenario>-<key>-<value>-s<seed>`."""
    return [
        SweepPoint(value, seed, f"{scenario_name}-{key}-{_slug(value)}-s{seed}")
        for value in values
        for seed in seeds
    ]


def run_sweep(
    scenario: Scenario, key: str, values: list[str], num_seeds: int, sweep_dir: Path, run_one: RunOne
) -> dict[str, Any]:
    """Run the grid (every variant checked first); write and return sweep.json's content."""
    if num_seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {num_seeds}")
    variants = {value: scenario.with_value(key, value) for value in values}  # bad values fail before any run
    seeds = [scenario.scenario.seed + i for i in range(num_seeds)]
    sweep_dir.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    for point in sweep_points(scenario.name, key, values, seeds):
        variant = variants[point.value].with_seed(point.seed)
        record: dict[str, Any] = {"value": point.value, "seed": point.seed, "run": point.run_name}
        try:
            payload = run_one(variant, sweep_dir / point.run_name)
        except FedwardError as exc:
            record["error"] = str(exc)
        else:
            record |= final_metrics(payload, scenario.metric)
        runs.append(record)
        result = summarise(scenario, key, values, num_seeds, runs)
        (sweep_dir / "sweep.json").write_text(json.dumps(json_safe(result), indent=2) + "\n")
    plot_sweep(result, sweep_dir / "sweep.png")
    if audited := [r["audit"] for r in runs if r.get("audit") and r["audit"]["claimed-epsilon"] is not None]:
        from fedward.server.report.plots import plot_audit_curve

        points = [
            (a["claimed-epsilon"], {k: v for k, v in a.items() if k != "claimed-epsilon"}) for a in audited
        ]
        plot_audit_curve(points, sweep_dir / "sweep-audit.png")
    return result


def final_metrics(payload: dict[str, Any], metric: str) -> dict[str, Any]:
    """Each arm's overall final `metric` of one run, and the largest ε a federated site spent."""
    out: dict[str, Any] = {
        arm: (payload[arm].get("overall") or {}).get(metric) for arm in ARMS if arm in payload
    }
    spent = [m.get("epsilon") for m in payload["federated"]["sites"].values()]
    finite = [e for e in spent if e is not None and math.isfinite(e)]
    out["epsilon-spent"] = max(finite) if finite else None
    if (audit := payload.get("empirical-privacy")) is not None:
        out["audit"] = {
            "claimed-epsilon": audit["claimed"]["epsilon"],
            **{name: a["epsilon-lower-bound"] for name, a in audit["adversaries"].items()},
        }
    return out


def summarise(
    scenario: Scenario, key: str, values: list[str], num_seeds: int, runs: list[dict[str, Any]]
) -> dict[str, Any]:
    """Mean and sample sd over seeds (sd 0 with one seed) of each arm at each value."""
    summary: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for value in values:
        summary[value] = {}
        for arm in ARMS:
            got = [
                float(r[arm])
                for r in runs
                if r["value"] == value and r.get(arm) is not None and not math.isnan(float(r[arm]))
            ]
            summary[value][arm] = {
                "mean": statistics.fmean(got) if got else None,
                "sd": statistics.stdev(got) if len(got) > 1 else (0.0 if got else None),
                "n": len(got),
            }
    return {
        "scenario": scenario.name,
        "source": scenario.source,
        "key": key,
        "values": values,
        "seeds": num_seeds,
        "metric": scenario.metric,
        "runs": runs,
        "summary": summary,
    }


def plot_sweep(result: dict[str, Any], path: Path) -> Path:
    """`metric` against the swept value: mean ± sd error bars per arm (PNG, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    key, values = result["key"], result["values"]
    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    spread = {"federated": -0.06, "pooled": 0.0, "local": 0.06}
    for arm in ARMS:
        stats = [result["summary"][v][arm] for v in values]
        if not any(s["n"] for s in stats):
            continue
        xs = [i + spread[arm] for i, s in enumerate(stats) if s["n"]]
        means = [s["mean"] for s in stats if s["n"]]
        sds = [s["sd"] for s in stats if s["n"]]
        ax.errorbar(
            xs,
            means,
            yerr=sds,
            marker="o",
            capsize=4,
            label=arm,
            linestyle="none" if key == "strategy" else "-",
        )
    ax.set_xticks(range(len(values)), [_tick(key, v) for v in values])
    ax.set_xlabel(AXIS_LABELS[key])
    ax.set_ylabel(f"{result['metric']} (overall, held-out)")
    ax.set_title(f"{result['scenario']}: {result['metric']} vs {key} (mean ± sd, {result['seeds']} seed(s))")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _tick(key: str, value: str) -> str:
    if key == "epsilon" and math.isinf(float(value)):
        return "∞ (no DP)"
    return value


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", value)
