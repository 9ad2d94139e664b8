"""Scale: many simulated CKD sites through `fedward sim ckd`, total wall and peak memory.

Arms (DP-SGD on, ε ≤ 3 per site, FedAvg, every site `--rows-per-site` rows of the synthetic `resample`
partition, so each site does the same work in every arm):

- **1000-sampled**: 1,000 sites, 10 % sampled to train and 10 % to evaluate each round, 10 rounds
  (targets on the 2-core machine: ≤ 5 min, ≤ 4 GB peak tree memory);
- **100-all** against **5-all**: every site trains and evaluates every round (target: the 100-site wall
  ≤ 2× the 5-site wall).

Peak memory is the RSS of the whole process tree (the CLI, the simulation process, Ray and its actors),
sampled every 0.2 s. The `resample` sites repeat rows across sites: these runs measure cost, not utility.

    python -P benchmarks/scale.py [--arms 1000-sampled 100-all 5-all] [--rounds 10]

Writes benchmarks/results/scale.json and .md (arms already there and not rerun are kept).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = ROOT / "benchmarks" / "results"
ARMS: dict[str, tuple[int, float]] = {"1000-sampled": (1000, 0.1), "100-all": (100, 1.0), "5-all": (5, 1.0)}


def _watch(proc: subprocess.Popen, peak: list[int], stop: threading.Event) -> None:
    """Keep the largest RSS sum of `proc` and its descendants in `peak[0]`."""
    root = psutil.Process(proc.pid)
    while not stop.is_set():
        total = 0
        with contextlib.suppress(psutil.Error):
            for member in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += member.memory_info().rss
        peak[0] = max(peak[0], total)
        stop.wait(0.2)


def run_arm(name: str, rounds: int, rows: int, work: Path) -> dict:
    """One `fedward sim ckd` run of arm `name`: wall, time to the first round line, peak tree memory,
    and the run's own timings from its summary and metrics."""
    sites, fraction = ARMS[name]
    command = [
        str(BIN / "fedward"), "sim", "ckd", "--sites", str(sites), "--rounds", str(rounds),
        "--partition", "resample", "--rows-per-site", str(rows),
        "--fraction-train", str(fraction), "--fraction-evaluate", str(fraction),
        "--runs-dir", str(work), "--name", name,
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, stop = [0], threading.Event()
    watcher = threading.Thread(target=_watch, args=(proc, peak, stop), daemon=True)
    watcher.start()
    first_round, tail = None, []
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = [*tail, line][-40:]
        if first_round is None and line.lstrip().startswith("round "):
            first_round = time.perf_counter() - started
    proc.wait()
    wall = time.perf_counter() - started
    stop.set()
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{''.join(tail)}")
    run = work / name
    summary = json.loads((run / "summary.json").read_text())
    rows_ = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [sum(s["train"] is not None for s in r["sites"].values()) for r in rows_]
    return {
        "sites": sites,
        "fraction": fraction,
        "rounds": rounds,
        "rows-per-site": rows,
        "wall-seconds": wall,
        "first-round-line-seconds": first_round,
        "peak-mb": peak[0] / 2**20,
        "server-wall-seconds": summary["wall-seconds"],
        "round-seconds": [r["round-seconds"] for r in rows_],
        "sites-trained-per-round": trained,
        "epsilon-max": max((s["epsilon"] or 0.0) for s in summary["sites"].values()),
        "stopped": summary["stopped"],
        "site-folder-mb": sum(f.stat().st_size for f in (run / "sites").rglob("*") if f.is_file()) / 2**20,
    }


def markdown(results: dict) -> str:
    """The table for BENCHMARKS.md."""
    lines = [
        "| arm | sites | sampled | rounds | wall s | first round line s | median round s | peak tree MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["arms"].items():
        rounds = sorted(r["round-seconds"])
        lines.append(
            f"| {name} | {r['sites']} | {r['fraction']:g} | {r['rounds']} | {r['wall-seconds']:.1f} | "
            f"{r['first-round-line-seconds']:.1f} | {rounds[len(rounds) // 2]:.2f} | {r['peak-mb']:.0f} |"
        )
    arms = results["arms"]
    if "100-all" in arms and "5-all" in arms:
        ratio = arms["100-all"]["wall-seconds"] / arms["5-all"]["wall-seconds"]
        lines += ["", f"100 sites / 5 sites, all training every round: {ratio:.2f}× wall (target ≤ 2×)"]
    if "1000-sampled" in arms:
        big = arms["1000-sampled"]
        lines.append(
            f"1,000 sites, 10 % sampled: {big['wall-seconds'] / 60:.1f} min (target ≤ 5), "
            f"{big['peak-mb'] / 1024:.2f} GB peak (target ≤ 4)"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--rows-per-site", type=int, default=40)
    args = parser.parse_args()
    out = RESULTS / "scale.json"
    results = json.loads(out.read_text()) if out.is_file() else {"arms": {}}
    with tempfile.TemporaryDirectory(prefix="fedward-scale-") as tmp:
        for name in args.arms:
            result = run_arm(name, args.rounds, args.rows_per_site, Path(tmp))
            print(f"{name}: " + json.dumps({k: v for k, v in result.items() if k != "round-seconds"}))
            results["arms"][name] = result
            RESULTS.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=1) + "\n")
            (RESULTS / "scale.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
