"""CKD utility under central (site-level) DP at 3, 10 and 100 simulated sites, against the same federation
without DP.

The central-DP arm uses the run defaults (adaptive clipping from C = 1, the default σ, δ = 1e-5, the ε
cap) and no DP-SGD at the sites, so the only privacy mechanism is the server's. Federations run in
process (tests/support/inprocess_grid.py: the real ServerApp and ClientApp code and Flower's serialisation
both ways, without Ray or a SuperLink), which keeps 100 sites within minutes on 2 cores. The 400-row CKD table
split over 100 sites leaves about 3 training rows and 1 held-out row per site. Prints a table, writes JSON
and Markdown.

    python -P benchmarks/central_dp.py [--seeds 2] [--sites 3 10 100] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "support"))  # the in-process grid lives with the tests

from flwr.supercore.task_identity import TaskIdentity  # noqa: E402
from inprocess_grid import InProcessGrid, ckd_run_config, run_server  # noqa: E402

from fedward.common.config import RunConfig  # noqa: E402
from fedward.server.checkpoint import RoundCheckpoint  # noqa: E402
from fedward.server.deployment.provision import write_provenance_key  # noqa: E402
from fedward.server.provenance.signing import PROVENANCE_KEY, SIGNING_KEY_ENV  # noqa: E402
from fedward.simulations.prepare import prepare_ckd_sites  # noqa: E402

ARMS = {"no-dp": {"central-dp": False}, "central-dp": {"central-dp": True}}
FIELDS = ("accuracy", "roc-auc", "epsilon", "clipping-norm-final", "train-rows-per-site", "seconds")


def run_arm(arm: str, sites: int, seed: int, args: argparse.Namespace, work: Path) -> dict[str, float | None]:
    """One federation: overall accuracy and AUC, site-level ε, the final clipping norm, wall seconds."""
    data_root = work / f"sites-{sites}-seed{seed}"
    if not data_root.exists():
        prepare_ckd_sites(data_root, sites, "iid", seed=seed)
    name = f"{arm}-{sites}-seed{seed}"
    settings = {"run-name": name, "num-server-rounds": args.rounds, "min-sites": sites, "seed": seed}
    config = ckd_run_config(data_root, work / "runs", **{**settings, "dp": False, **ARMS[arm]})
    started = time.perf_counter()
    run_server(InProcessGrid(config, sites), config)
    seconds = time.perf_counter() - started
    summary = json.loads((work / "runs" / name / "summary.json").read_text())
    central = summary["central-dp"] or {}
    checkpoint = RoundCheckpoint.load(work / "runs" / name)
    layer = next((s for s in checkpoint.strategy if "clipping_norm" in s), {}) if checkpoint else {}
    return {
        "accuracy": summary["overall"].get("accuracy"),
        "roc-auc": summary["overall"].get("roc-auc"),
        "epsilon": central.get("epsilon"),
        "delta": central.get("delta"),
        "rounds-completed": summary["rounds-completed"],
        "clipping-norm-final": layer.get("clipping_norm"),
        "train-rows-per-site": statistics.fmean(s["data"]["num-train"] for s in summary["sites"].values()),
        "seconds": seconds,
    }


def summarise(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Mean and sd over seeds per (sites, arm)."""
    table: dict[str, dict[str, float]] = {}
    for key in sorted({(r["sites"], r["arm"]) for r in rows}, key=lambda k: (k[0], k[1] != "no-dp")):
        group = [r for r in rows if (r["sites"], r["arm"]) == key]
        out: dict[str, float] = {"seeds": len(group)}
        for field in FIELDS:
            values = [r[field] for r in group if r[field] is not None]
            if values:
                out[f"{field}-mean"] = statistics.fmean(values)
                out[f"{field}-sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        table[f"{key[0]} sites, {key[1]}"] = out
    return table


def markdown(table: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    """The BENCHMARKS.md table."""
    d = RunConfig()
    lines = [
        f"CKD, IID, {args.rounds} rounds, model {d.model}, no DP-SGD at the sites; central DP: adaptive "
        f"clipping from C = {d.central_dp_clipping_norm:g}, z = {d.central_dp_noise_multiplier:g}, "
        f"δ = {d.central_dp_delta:g} (mean ± sd over seeds)",
        "",
        "| sites, arm | train rows/site | accuracy | ROC AUC | site-level ε | final C | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        eps = f"{row['epsilon-mean']:.2f}" if "epsilon-mean" in row else "–"
        clip = f"{row['clipping-norm-final-mean']:.2f}" if "clipping-norm-final-mean" in row else "–"
        lines.append(
            f"| {name} | {row['train-rows-per-site-mean']:.1f} "
            f"| {row['accuracy-mean']:.3f} ± {row['accuracy-sd']:.3f} "
            f"| {row['roc-auc-mean']:.3f} ± {row['roc-auc-sd']:.3f} | {eps} | {clip} "
            f"| {row['seconds-mean']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def write(rows: list[dict], args: argparse.Namespace, seconds: float) -> None:
    """JSON results and the Markdown table for the runs done so far."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "central_dp",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "defaults": {k: v for k, v in RunConfig().to_flower().items() if k.startswith("central-dp")},
        "runs": rows,
        "summary": summarise(rows),
        "wall-seconds": seconds,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(summarise(rows), args))


def main() -> None:
    """Parse options, run every (sites, seed, arm), print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[3, 10, 100])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--seeds-100", type=int, default=1, help="seeds for federations of 100+ sites")
    parser.add_argument("--rounds", type=int, default=5, help="5 keeps 100 sites within ~5 minutes")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/central_dp.json"))
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # Messages outside Flower
    started = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fedward-central-dp-") as tmp:
        work = Path(tmp)
        write_provenance_key(work)  # runs sign with a throwaway key, not the user's
        os.environ[SIGNING_KEY_ENV] = str(work / PROVENANCE_KEY)
        for sites in args.sites:
            for seed in range(args.seeds_100 if sites >= 100 else args.seeds):
                for arm in ARMS:
                    row = {"sites": sites, "seed": seed, "arm": arm, **run_arm(arm, sites, seed, args, work)}
                    rows.append(row)
                    print(f"{sites} sites seed {seed} {arm}: {row}", flush=True)
                    write(rows, args, time.perf_counter() - started)  # partial results survive a stop
    print(markdown(summarise(rows), args))


if __name__ == "__main__":
    main()
