"""Aggregation strategies on the synthetic tumour benchmark with scanner shift (no DP).

Each site's phantoms come from its own simulated scanner (intensity scale, bias field, noise, voxel size)
and its own class mix, so this is the setting FedBN targets. Every strategy runs through the real
`fedward sim tumour` command; prints a table and writes JSON and Markdown.

    python -P benchmarks/tumour_strategies.py   # -P: do not put benchmarks/ first on sys.path, where
                                                # benchmarks/strategies.py would shadow the strategies package
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedward.strategies.registry import ROBUST_STRATEGIES, STRATEGIES

FEDWARD = str(Path(sys.executable).parent / "fedward")


def run_strategy(name: str, args: argparse.Namespace, work: Path) -> dict:
    """One federated run; per-round overall accuracy and final metrics from its run directory."""
    command = [
        FEDWARD, "sim", "tumour", "--sites", str(args.sites), "--rounds", str(args.rounds),
        "--patients", str(args.patients), "--no-dp", "--strategy", name, "--seed", str(args.seed),
        "--name", name, "--runs-dir", str(work),
    ]  # fmt: skip
    t0 = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    summary_file = work / name / "summary.json"
    if result.returncode != 0 or not summary_file.is_file():
        return {"error": (result.stderr or result.stdout)[-500:], "seconds": seconds}
    summary = json.loads(summary_file.read_text())
    rounds = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
    return {
        "accuracy-per-round": [r["overall"].get("accuracy") for r in rounds],
        "accuracy": summary["overall"].get("accuracy"),
        "roc-auc": summary["overall"].get("roc-auc"),
        "seconds": seconds,
    }


def markdown(results: dict[str, dict], args: argparse.Namespace) -> str:
    """The BENCHMARKS.md table."""
    lines = [
        f"Tumour phantoms (4-class), {args.sites} sites with their own scanners, "
        f"{args.patients} patients per "
        f"site, {args.rounds} rounds, no DP, seed {args.seed}",
        "",
        f"| strategy | rounds to {args.target} | final accuracy | macro ROC AUC | wall s |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | error | – | – | {r['seconds']:.0f} |")
            continue
        reached = next((i + 1 for i, a in enumerate(r["accuracy-per-round"]) if a and a >= args.target), None)
        auc = "–" if r["roc-auc"] is None else f"{r['roc-auc']:.3f}"
        lines.append(f"| {name} | {reached or '–'} | {r['accuracy']:.3f} | {auc} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run every strategy (robust ones need enough sites), print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--patients", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", type=float, default=0.7)
    parser.add_argument(
        "--strategies", nargs="+", default=[s for s in STRATEGIES if s not in ROBUST_STRATEGIES]
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tumour_strategies.json"))
    args = parser.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="fedward-tumour-strategies-") as tmp:
        for name in args.strategies:
            results[name] = run_strategy(name, args, Path(tmp))
            print(name, {k: v for k, v in results[name].items() if k != "accuracy-per-round"}, flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
            args.out.write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")
            args.out.with_suffix(".md").write_text(markdown(results, args))
    print(markdown(results, args))


if __name__ == "__main__":
    main()
