"""CKD utility: pooled vs local-only vs federated, without DP and with DP at several ε.

5 sites, Dirichlet(α) label skew, several seeds. Federated runs go through the real Flower simulation
runtime (`fedward sim` path); pooled and local-only baselines (simulations/baselines.py, without DP)
train the same model with the same loop and the same number of epochs in-process. Prints a table and
writes JSON (and a Markdown table).

    python benchmarks/ckd_utility.py --seeds 5 --out benchmarks/results/ckd_utility.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fedward.common.config import RunConfig
from fedward.common.tasks.ckd import CkdTask
from fedward.simulations.baselines import load_sites, local_baselines, pooled_baseline
from fedward.simulations.prepare import prepare_ckd_sites
from fedward.simulations.runner import run_simulation


def run_seed(seed: int, args: argparse.Namespace, work: Path) -> dict[str, dict[str, float]]:
    """All arms of the comparison for one seed."""
    data_root = work / f"seed-{seed}" / "sites"
    prepare_ckd_sites(data_root, args.sites, "dirichlet", alpha=args.alpha, seed=seed)
    base = RunConfig(
        num_server_rounds=args.rounds,
        seed=seed,
        model=args.model,
        lr=args.lr,
        batch_size=args.batch_size,
        min_sites=args.sites,
        data_root=str(data_root),
        partition="dirichlet",
        dirichlet_alpha=args.alpha,
        runs_dir=str(work / "runs"),
    )
    sites = load_sites(base, data_root, args.sites)
    plain = base.model_copy(update={"dp": False})  # the baselines train without DP
    cpu = torch.device("cpu")
    out: dict[str, dict[str, float]] = {}

    pooled = pooled_baseline(plain, sites, device=cpu)
    out["pooled"] = {
        "accuracy": pooled["overall"]["accuracy"],
        "roc-auc": pooled["overall"]["roc-auc"],
        "seconds": pooled["seconds"],
    }
    local = local_baselines(plain, sites, device=cpu)
    out["local-only"] = {
        "accuracy": local["mean-over-sites"]["accuracy"],
        "roc-auc": local["mean-over-sites"]["roc-auc"],
        "seconds": local["seconds"],
    }

    default_sigma = CkdTask.statistics_noise_multiplier
    arms = [("federated", False, 0.0, default_sigma)] + [
        (f"federated-dp-eps{e:g}" + ("" if s == default_sigma else f"-stats-sigma{s:g}"), True, e, s)
        for e in args.epsilons
        for s in args.statistics_noise
    ]
    for name, dp, eps, stats_sigma in arms:
        run_name = f"{name}-seed{seed}"
        # each arm on fresh site folders: a site keeps its statistics release per data set, and a later
        # arm would otherwise reuse it at no cost (and with the earlier arm's σ)
        arm_root = work / f"seed-{seed}" / name
        prepare_ckd_sites(arm_root, args.sites, "dirichlet", alpha=args.alpha, seed=seed)
        update = {"dp": dp, "dp_target_epsilon": eps or 3.0, "dp_statistics_noise_multiplier": stats_sigma}
        update["data_root"] = str(arm_root)
        config = base.model_copy(update={**update, "run_name": run_name})
        t0 = time.perf_counter()
        run_simulation(config.to_flower(), args.sites, log_file=work / f"{run_name}.log")
        summary = json.loads((work / "runs" / run_name / "summary.json").read_text())
        eps_spent = [s["epsilon"] for s in summary["sites"].values()]
        eps_stats = [s.get("statistics-epsilon") or 0.0 for s in summary["sites"].values()]
        out[name] = {
            "accuracy": summary["overall"]["accuracy"],
            "roc-auc": summary["overall"]["roc-auc"],
            "epsilon-max": max(eps_spent) if dp else None,
            "statistics-epsilon": max(eps_stats) if dp else None,
            "seconds": time.perf_counter() - t0,
            "server-seconds": summary["wall-seconds"],
        }
        print(f"seed {seed} {name}: {out[name]}", flush=True)
    return out


def summarise(per_seed: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean and sd over seeds of each arm's accuracy, AUC and seconds."""
    table = {}
    for arm in per_seed[0]:
        row = {}
        for key in ("accuracy", "roc-auc", "seconds", "epsilon-max", "statistics-epsilon"):
            values = [s[arm][key] for s in per_seed if s[arm].get(key) is not None]
            if not values:
                continue
            row[f"{key}-mean"] = statistics.fmean(values)
            row[f"{key}-sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        table[arm] = row
    return table


def markdown(table: dict[str, dict[str, float]], args: argparse.Namespace, seeds: int) -> str:
    """The BENCHMARKS.md table."""
    lines = [
        f"CKD, {args.sites} sites, Dirichlet α = {args.alpha}, {args.rounds} rounds, model {args.model}, "
        f"lr {args.lr}, batch {args.batch_size}, {seeds} seeds (mean ± sd)",
        "",
        "| arm | accuracy | ROC AUC | ε run (max) | ε statistics | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for arm, row in table.items():
        eps = f"{row['epsilon-max-mean']:.2f}" if "epsilon-max-mean" in row else "–"
        stats = f"{row['statistics-epsilon-mean']:.3f}" if "statistics-epsilon-mean" in row else "–"
        lines.append(
            f"| {arm} | {row['accuracy-mean']:.4f} ± {row['accuracy-sd']:.4f} "
            f"| {row['roc-auc-mean']:.4f} ± {row['roc-auc-sd']:.4f} | {eps} | {stats} "
            f"| {row['seconds-mean']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse options, run every seed, print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=RunConfig().num_server_rounds)
    parser.add_argument("--model", default=RunConfig().model)
    parser.add_argument("--lr", type=float, default=RunConfig().lr)
    parser.add_argument("--batch-size", type=int, default=RunConfig().batch_size)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument(
        "--statistics-noise",
        type=float,
        nargs="+",
        default=[CkdTask.statistics_noise_multiplier],
        help="σ of the statistics release, one DP arm each (e.g. 6 1000: 1000 ≈ the public reference alone)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ckd_utility.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    per_seed: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="fedward-bench-") as tmp:
        for seed in range(args.seeds):
            per_seed.append(run_seed(seed, args, Path(tmp)))
            write(per_seed, args, time.perf_counter() - started)  # partial results survive a stop
    print(markdown(summarise(per_seed), args, len(per_seed)))


def write(per_seed: list[dict[str, dict[str, float]]], args: argparse.Namespace, seconds: float) -> None:
    """Write the JSON results and the Markdown table for the seeds done so far."""
    table = summarise(per_seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "ckd_utility",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seeds-done": len(per_seed),
        "per-seed": per_seed,
        "summary": table,
        "wall-seconds": seconds,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(table, args, len(per_seed)))


if __name__ == "__main__":
    main()
