"""Local DP against distributed DP at the same ε: final accuracy of CKD and the tumour classifier.

Every arm is a real local simulation (`run_study`, Flower's in-process engine) of the same sites and
seed: no DP; local DP-SGD at each site (fedward's default training); distributed DP on secure
aggregation (one full-batch noisy gradient step a round, each site adding a 1/sqrt(t) share of the
noise: common/distributed_dp.py). Writes benchmarks/results/distributed_dp.json and prints a table.

    python benchmarks/distributed_dp.py [--seeds 3] [--tasks ckd,tumour] [--epsilons 1,3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "distributed_dp.json"

from fedward.simulations.scenario import parse_scenario  # noqa: E402
from fedward.simulations.study import run_study  # noqa: E402

DISTRIBUTED = {"secure-aggregation": True, "distributed-dp": True}
# each arm's own training recipe; the privacy target is the same
CKD = {
    "local-dp": {"rounds": 10, "training": {}, "run-config": {}},
    "distributed-dp": {"rounds": 30, "training": {"lr": 1.0}, "run-config": DISTRIBUTED},
}
TUMOUR = {
    "local-dp": {"rounds": 3, "training": {}, "run-config": {}},
    "distributed-dp": {
        "rounds": 40, "training": {"lr": 1.0}, "strategy": {"name": "fedadam", "server-lr": 0.01},
        "run-config": DISTRIBUTED,
    },
}  # fmt: skip


def scenario(
    task: str,
    arm: str,
    epsilon: float | None,
    seed: int,
    sites: int = 3,
    alpha: float | None = None,
    tumour_sizes: list[int] | None = None,
) -> dict[str, Any]:
    """The scenario document of one run (CKD: `alpha` for Dirichlet label skew, else iid)."""
    recipe = (CKD if task == "ckd" else TUMOUR).get(arm, {"rounds": 10 if task == "ckd" else 3})
    doc: dict[str, Any] = {
        "scenario": {"name": f"{task}-{arm}", "task": task, "sites": sites, "seed": seed,
                     "rounds": recipe["rounds"]},
        "privacy": {"dp": epsilon is not None, "epsilon": epsilon or 3.0, "accountant": "rdp"},
        "training": dict(recipe.get("training", {})),
        "run-config": dict(recipe.get("run-config", {})),
    }  # fmt: skip
    if "strategy" in recipe:
        doc["strategy"] = recipe["strategy"]
    if task == "ckd" and alpha is not None:
        doc["partition"] = {"kind": "dirichlet", "alpha": alpha}
    if task == "tumour":
        doc["data"] = {"patients": tumour_sizes or 24, "format": "nifti"}
        if tumour_sizes:
            doc["scenario"]["sites"] = len(tumour_sizes)
        doc["partition"] = {"kind": "dirichlet", "alpha": 2.0}
        doc["training"] = {"local-epochs": 40, "batch-size": 4, "lr": 0.002, "optimizer": "adam",
                           "model": "cnn", **doc["training"]}  # fmt: skip
        if tumour_sizes and arm != "distributed-dp":  # sites of hundreds: large batches, few epochs
            doc["training"].update({"local-epochs": 3, "batch-size": 32, "lr": 0.01})
        if arm == "distributed-dp":
            doc["training"]["optimizer"] = "sgd"
    return doc


def run_arm(
    task: str,
    arm: str,
    epsilon: float | None,
    seed: int,
    work: Path,
    sites: int = 3,
    alpha: float | None = None,
    tumour_sizes: list[int] | None = None,
) -> dict[str, Any]:
    doc = scenario(task, arm, epsilon, seed, sites, alpha, tumour_sizes)
    spec = parse_scenario(doc, f"<{task}-{arm}>")
    started = time.perf_counter()
    payload = run_study(spec, work / f"{task}-{arm}-e{epsilon}-s{seed}", baselines=False)
    federated = payload["federated"]
    spent = [s.get("epsilon") for s in federated["sites"].values()]
    return {
        "accuracy": federated["overall"].get("accuracy"),
        "roc-auc": federated["overall"].get("roc-auc"),
        "epsilon-spent": max((e for e in spent if e is not None), default=None),
        "rounds": federated.get("rounds-completed"),
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", default="ckd,tumour")
    parser.add_argument("--epsilons", default="1,3")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--sites", type=int, default=3, help="CKD sites")
    parser.add_argument("--alpha", type=float, default=None, help="CKD Dirichlet label skew (default iid)")
    parser.add_argument("--arms", default="no-dp,local-dp,distributed-dp")
    parser.add_argument(
        "--tumour-sizes", default="", help="patients per tumour site, e.g. 40,120,250,400 (default 3 x 24)"
    )
    args = parser.parse_args()
    epsilons = [float(e) for e in args.epsilons.split(",")]
    sizes = [int(n) for n in args.tumour_sizes.split(",")] if args.tumour_sizes else None
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedward-ddp-") as tmp:
        for task in args.tasks.split(","):
            seeds = range(args.seeds if task == "ckd" else 1)
            for seed in seeds:
                wanted = args.arms.split(",")
                arms = [("no-dp", None)] + [(a, e) for e in epsilons for a in ("local-dp", "distributed-dp")]
                arms = [(a, e) for a, e in arms if a in wanted]
                for arm, epsilon in arms:
                    result = run_arm(task, arm, epsilon, seed, Path(tmp), args.sites, args.alpha, sizes)
                    runs.append({"task": task, "arm": arm, "epsilon": epsilon, "seed": seed, **result})
                    print(json.dumps(runs[-1]), flush=True)
    table: dict[str, dict[str, Any]] = {}
    for run in runs:
        key = f"{run['task']} {run['arm']} eps={run['epsilon']}"
        table.setdefault(key, {"accuracy": [], "epsilon-spent": []})
        table[key]["accuracy"].append(run["accuracy"])
        table[key]["epsilon-spent"].append(run["epsilon-spent"])
    summary = {
        k: {"median-accuracy": statistics.median(v["accuracy"]), "accuracies": v["accuracy"],
            "epsilon-spent": v["epsilon-spent"]}
        for k, v in table.items()
    }  # fmt: skip
    print(f"{'run':40s} {'median acc':>10s}  accuracies")
    for k, v in summary.items():
        print(f"{k:40s} {v['median-accuracy']:10.3f}  {[round(a, 3) for a in v['accuracies']]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    skew = "iid" if args.alpha is None else f"Dirichlet {args.alpha:g}"
    tumour = f"tumour sites of {sizes} patients" if sizes else "3 tumour sites of 24 patients"
    note = (
        f"{args.sites} CKD sites ({skew}), {tumour} (nifti phantoms, Dirichlet 2); other "
        "benchmarks may have run on this 2-core machine at the same time (accuracy only: no timing claims)"
    )
    args.out.write_text(json.dumps({"runs": runs, "summary": summary, "note": note}, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
