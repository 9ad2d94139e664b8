"""Aggregation strategies on CKD: rounds to a target accuracy, final accuracy, and robustness to a
hostile site.

5 sites, Dirichlet(α = 0.1) label skew (sites of >= 10 rows, `simulations/label_skew.py`), no DP
(to keep it quick). Part 1 runs every strategy on honest
sites. Part 2 makes one site hostile (sign flip x10 by default) and compares FedAvg with the robust
rules, plus FedAvg behind the server's relative update-norm bound. Part 1 and 2 switch the norm bound
off (`update-norm-factor = 0`) so the rules themselves are measured. Every run is a real Flower
simulation (the `fedward sim` path). Prints a table and writes JSON and Markdown.

    python -P benchmarks/strategies.py --seeds 1 --out benchmarks/results/strategies.json

(-P keeps benchmarks/ off the front of sys.path, where this file would shadow the strategies package.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

# run as a script, this file's folder comes first on sys.path and its name would hide the package
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

from fedward.common.config import RunConfig
from fedward.simulations.label_skew import prepare_skewed_ckd_sites
from fedward.simulations.runner import run_simulation
from fedward.strategies.registry import ROBUST_STRATEGIES, STRATEGIES

PARTITIONS: dict[str, dict[str, Any]] = {}  # data folder -> Dirichlet draw and rows per site


@dataclass(frozen=True)
class Arm:
    """One configuration to run: a label, run-config overrides, and its number of sites."""

    name: str
    part: str  # "honest" or "hostile"
    overrides: dict[str, Any] = field(default_factory=dict)
    sites: int | None = None  # None: --sites


def arms(args: argparse.Namespace) -> list[Arm]:
    """Part 1: every strategy, honest sites. Part 2: one hostile site vs FedAvg and the robust rules."""
    off = {"update_norm_factor": 0.0}
    out = [Arm(name, "honest", {"strategy": name, **off}) for name in args.strategies]
    hostile = {"hostile_sites": "1", "hostile_mode": args.hostile_mode, "hostile_scale": args.hostile_scale}
    for name in ("fedavg", *ROBUST_STRATEGIES):
        f = 1 if name in ("krum", "multikrum") or (name == "bulyan" and args.sites >= 7) else 0
        label = f"{name} (f={f})" if name in ("krum", "multikrum", "bulyan") else name
        out.append(Arm(label, "hostile", {"strategy": name, "num_malicious_sites": f, **hostile, **off}))
    out.append(
        Arm(
            f"fedavg + update-norm-factor {args.norm_factor:g}",
            "hostile",
            {"strategy": "fedavg", **hostile, "update_norm_factor": args.norm_factor},
        )
    )
    if args.sites < 7:  # Bulyan tolerates f malicious sites only with >= 4f + 3 sites
        out.append(
            Arm(
                "bulyan (f=1), 7 sites",
                "hostile",
                {"strategy": "bulyan", "num_malicious_sites": 1, **hostile, **off},
                sites=7,
            )
        )
    return out


def run_arm(arm: Arm, seed: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One simulation; accuracy per round, rounds to the target, final metrics, rejections."""
    sites = arm.sites or args.sites
    data_root = work / f"seed-{seed}-sites-{sites}"
    if not data_root.exists():
        folders, draw = prepare_skewed_ckd_sites(
            data_root, sites, args.alpha, seed=seed, first_draw=100 * seed, min_rows=args.min_rows
        )
        rows = {
            f.name: {part: len(pd.read_csv(f / f"{part}.csv")) for part in ("train", "test")} for f in folders
        }
        PARTITIONS[data_root.name] = {"dirichlet-draw": draw, "rows": rows}
        print(f"seed {seed}: {sites} sites from Dirichlet draw {draw}: {rows}", flush=True)
    run_name = f"{arm.part}-{arm.name}-seed{seed}".replace(" ", "_").replace("(", "").replace(")", "")
    config = RunConfig(
        num_server_rounds=args.rounds,
        min_sites=sites,
        seed=seed,
        dp=False,
        model=args.model,
        lr=args.lr,
        data_root=str(data_root),
        partition="dirichlet",
        dirichlet_alpha=args.alpha,
        runs_dir=str(work / "runs"),
        run_name=run_name,
        device="cpu",
        **arm.overrides,
    )
    started = time.perf_counter()
    run_simulation(config.to_flower(), sites, log_file=work / f"{run_name}.log")
    seconds = time.perf_counter() - started
    run = work / "runs" / run_name
    summary = json.loads((run / "summary.json").read_text())
    rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {
        "accuracy": summary["overall"].get("accuracy"),
        "roc-auc": summary["overall"].get("roc-auc"),
        "accuracy-per-round": [r["overall"].get("accuracy") for r in rounds],
        "rejected-updates": sum(r.get("rejected-updates", 0) for r in rounds),
        "seconds": seconds,
    }


def rounds_to(accuracy: list[float | None], target: float) -> int | None:
    """First round (1-based) whose pooled accuracy reaches `target`; None if none does."""
    return next((i for i, a in enumerate(accuracy, 1) if a is not None and a >= target), None)


def summarise(per_seed: list[dict[str, dict[str, Any]]], targets: list[float]) -> dict[str, dict[str, Any]]:
    """Mean and sd over seeds; rounds to each target as the list over seeds (None: not reached)."""
    table: dict[str, dict[str, Any]] = {}
    for arm in per_seed[0]:
        rows = [s[arm] for s in per_seed if arm in s]
        row: dict[str, Any] = {"part": rows[0]["part"], "seeds": len(rows)}
        for key in ("accuracy", "roc-auc", "seconds"):
            values = [r[key] for r in rows if r.get(key) is not None]
            row[f"{key}-mean"] = statistics.fmean(values) if values else None
            row[f"{key}-sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        for target in targets:
            row[f"rounds-to-{target:g}"] = [rounds_to(r["accuracy-per-round"], target) for r in rows]
        row["rejected-updates"] = sum(r["rejected-updates"] for r in rows)
        table[arm] = row
    return table


def _cell(mean: float | None, sd: float, seeds: int) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.4f} ± {sd:.4f}" if seeds > 1 else f"{mean:.4f}"


def markdown(table: dict[str, dict[str, Any]], args: argparse.Namespace, seeds: int) -> str:
    """The two result tables."""
    head = (
        f"CKD, {args.sites} sites, Dirichlet α = {args.alpha}, {args.rounds} rounds, model {args.model}, "
        f"lr {args.lr}, no DP, {seeds} seed(s)"
    )
    lines = [head, ""]
    for part, title in (
        ("honest", "Honest sites"),
        ("hostile", f"Site 1 hostile ({args.hostile_mode} x{args.hostile_scale:g})"),
    ):
        lines += [
            f"**{title}**",
            "",
            "| strategy | "
            + "".join(f"rounds to {t:g} | " for t in args.targets)
            + "final accuracy | ROC AUC | rejected updates | wall s |",
            "|---|" + "---|" * (len(args.targets) + 4),
        ]
        for arm, row in table.items():
            if row["part"] != part:
                continue
            reached = "".join(
                ", ".join("–" if r is None else str(r) for r in row[f"rounds-to-{t:g}"]) + " | "
                for t in args.targets
            )
            accuracy = _cell(row["accuracy-mean"], row["accuracy-sd"], row["seeds"])
            auc = _cell(row["roc-auc-mean"], row["roc-auc-sd"], row["seeds"])
            lines.append(
                f"| {arm.split(': ', 1)[1]} | {reached}{accuracy} | {auc} | {row['rejected-updates']} "
                f"| {row['seconds-mean']:.0f} |"
            )
        lines.append("")
    lines.append(
        "Rounds to a target: first round whose pooled test accuracy (all sites) reaches it, per seed "
        "(– never). Wall s: the whole simulation, about 20 s of it start-up."
    )
    return "\n".join(lines) + "\n"


def write(per_seed: list[dict[str, dict[str, Any]]], args: argparse.Namespace, seconds: float) -> None:
    """Write JSON and Markdown for the runs done so far."""
    table = summarise(per_seed, args.targets)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "strategies",
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("render", "resume")
        },
        "seeds-done": len(per_seed),
        "partitions": PARTITIONS,
        "per-seed": per_seed,
        "summary": table,
        "wall-seconds": seconds,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(table, args, len(per_seed)))


def main() -> None:
    """Parse options, run every arm for every seed, print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.95, 0.99])
    parser.add_argument("--min-rows", type=int, default=10, help="smallest site (rows) a partition may have")
    parser.add_argument("--model", default=RunConfig().model)
    parser.add_argument("--lr", type=float, default=RunConfig().lr)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--hostile-mode", default="sign-flip")
    parser.add_argument("--hostile-scale", type=float, default=10.0)
    parser.add_argument("--norm-factor", type=float, default=3.0, help="update-norm-factor of the extra arm")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/strategies.json"))
    parser.add_argument("--render", action="store_true", help="only re-write the tables from --out's JSON")
    parser.add_argument("--resume", action="store_true", help="keep the seeds in --out's JSON, run the rest")
    args = parser.parse_args()
    per_seed: list[dict[str, dict[str, Any]]] = []
    done_seconds = 0.0
    if args.render or args.resume:
        saved = json.loads(args.out.read_text())
        PARTITIONS.update(saved.get("partitions", {}))
        per_seed, done_seconds = saved["per-seed"], saved["wall-seconds"]
    if args.render:
        write(per_seed, args, done_seconds)
        print(args.out.with_suffix(".md").read_text())
        return
    started = time.perf_counter() - done_seconds
    with tempfile.TemporaryDirectory(prefix="fedward-bench-") as tmp:
        for seed in range(len(per_seed), args.seeds):
            results: dict[str, dict[str, Any]] = {}
            per_seed.append(results)
            for arm in arms(args):
                key = f"{arm.part}: {arm.name}"
                results[key] = {"part": arm.part, **run_arm(arm, seed, args, Path(tmp))}
                print(f"seed {seed} {key}: {results[key]}", flush=True)
                write(per_seed, args, time.perf_counter() - started)  # partial results survive a stop
    print(markdown(summarise(per_seed, args.targets), args, len(per_seed)))


if __name__ == "__main__":
    main()
