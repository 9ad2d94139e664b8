"""The privacy audit (issue 18) at full size: empirical ε lower bounds beside the claimed ε, and its cost.

(a) CKD: `fedward sim audit` with its defaults (3 sites, 10 rounds, 1000 canaries capped at the MLP's
866 weights, LiRA membership inference) for no DP, DP ε = 1, 3, 8 and the seeded-noise research switch at
ε = 3, each with seeds 0, 1, 2 (the seed sets splits and initial weights; canaries, coins and DP noise
come from OS entropy in every run anyway). Each run is the CLI in a subprocess; its audit is read back
from the run's summary.json ("empirical-privacy").

(b) Tumour classifier: the tumour-scanner-shift scenario made smaller for CPU (3 sites, 3 rounds, fewer
local epochs, NIfTI), audited through `run_study(..., audit=N, baselines=False)`, no DP and DP ε = 3, 8,
one seed each. Tumour trains with Adam, so the knowing-seed adversary (a linear replay of the noise,
valid for SGD) does not apply: no seeded arm.

(c) Cost: `fedward sim ckd` and `fedward sim audit` with the same defaults, alternately, wall time of the
whole command; medians and their ratio (target ≤ 5×).

    python -P benchmarks/privacy_audit.py [--parts ckd tumour cost] [--seeds 0 1 2] [--repeats 3]
        [--ckd-arms no-dp dp-1 dp-3 dp-8 seeded-3]

Writes benchmarks/results/privacy_audit.json (a part run alone replaces only its own entry).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks/results/privacy_audit.json"
FEDWARD = shutil.which("fedward", path=str(Path(sys.executable).parent)) or "fedward"
CKD_ARMS: dict[str, list[str]] = {
    "no DP": ["--no-dp"],
    "DP ε = 1": ["--epsilon", "1"],
    "DP ε = 3": ["--epsilon", "3"],
    "DP ε = 8": ["--epsilon", "8"],
    "seeded noise, ε = 3": ["--epsilon", "3", "--seeded-noise"],
}
CKD_IDS = dict(zip(("no-dp", "dp-1", "dp-3", "dp-8", "seeded-3"), CKD_ARMS, strict=True))
TUMOUR_SCENARIO = ROOT / "simulations/scenarios/tumour-scanner-shift.toml"
TUMOUR_ARMS: dict[str, float] = {"no DP": math.inf, "DP ε = 3": 3.0, "DP ε = 8": 8.0}
TUMOUR_CHANGES = {"sites": 3, "rounds": 3, "local-epochs": 3, "format": "nifti"}
LOW_FPR = "0.01"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def timed(command: list[str], log_file: Path) -> float:
    """Run a fedward command to the end (output to `log_file`); its wall time in seconds."""
    start = time.perf_counter()
    with log_file.open("w") as out:
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}); see {log_file}")
    return seconds


def row(audit: dict[str, Any]) -> dict[str, Any]:
    """The figures of one audit that the tables show."""
    bounds = {name: entry["epsilon-lower-bound"] for name, entry in audit["adversaries"].items()}
    mia = audit["membership-inference"]
    return {
        "claimed-epsilon": audit["claimed"]["epsilon"],
        "delta": audit["claimed"]["delta"],
        "canaries": audit["canaries"],
        "bounds": bounds,
        "correct-guesses": {n: [e["correct"], e["guesses"]] for n, e in audit["adversaries"].items()},
        "epsilon-lower-bound": audit["epsilon-lower-bound"],
        "leak": audit["leak"],
        "mia-auc": mia["auc"],
        "mia-tpr-at-1pct-fpr": mia["tpr-at-fpr"].get(LOW_FPR),
        "mia-attack": mia.get("attack"),
        "mia-members": mia["members"],
        "mia-non-members": mia["non-members"],
    }


# ------------------------------------------------------------------ (a) CKD


def ckd_table(work: Path, seeds: list[int], only: list[str]) -> dict[str, Any]:
    arms: dict[str, list[dict[str, Any]]] = {}
    for arm, flags in ((a, f) for a, f in CKD_ARMS.items() if a in only):
        for seed in seeds:
            name = f"audit-{len(arms.get(arm, []))}-{'-'.join(flags).replace('.', '')}-s{seed}"
            command = [FEDWARD, "sim", "audit", *flags, "--seed", str(seed), "--name", name,
                       "--runs-dir", str(work)]  # fmt: skip
            seconds = timed(command, work / f"{name}.log")
            audit = json.loads((work / name / "summary.json").read_text())["empirical-privacy"]
            result = {"seed": seed, "wall-seconds": round(seconds, 1), **row(audit)}
            arms.setdefault(arm, []).append(result)
            log(f"CKD {arm}, seed {seed}: bounds {result['bounds']}, claimed {result['claimed-epsilon']}, "
                f"MIA AUC {result['mia-auc']:.3f}, leak {result['leak']} ({seconds:.0f} s)")  # fmt: skip
    return {"arms": arms, "verdicts": ckd_verdicts(arms)}


def ckd_verdicts(arms: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The issue's done-when, checked over every seed."""
    open_runs = arms.get("no DP", [])
    tpr = [r["mia-tpr-at-1pct-fpr"] for r in open_runs]
    dp_ok = {
        arm: all(b <= r["claimed-epsilon"] for r in runs for b in r["bounds"].values())
        for arm, runs in arms.items()
        if arm.startswith("DP")
    }
    seeded = arms.get("seeded noise, ε = 3", [])
    return {
        "no-dp-bound-at-least-4": bool(open_runs) and all(r["epsilon-lower-bound"] >= 4 for r in open_runs),
        "no-dp-bounds": [r["epsilon-lower-bound"] for r in open_runs],
        "no-dp-mia-tpr-at-1pct-fpr": tpr,
        "dp-bounds-at-most-claimed": dp_ok,
        "seeded-flagged-as-leak": bool(seeded) and all(r["leak"] for r in seeded),
    }


# ------------------------------------------------------------------ (b) tumour


def tumour_scenario(epsilon: float) -> Any:
    """tumour-scanner-shift, smaller (TUMOUR_CHANGES), with DP at `epsilon` (inf: none)."""
    from fedward.simulations.scenario import parse_scenario

    document = tomllib.loads(TUMOUR_SCENARIO.read_text())
    document["scenario"] |= {"sites": TUMOUR_CHANGES["sites"], "rounds": TUMOUR_CHANGES["rounds"]}
    document["data"]["format"] = TUMOUR_CHANGES["format"]
    document["training"]["local-epochs"] = TUMOUR_CHANGES["local-epochs"]
    document["privacy"] = {"dp": math.isfinite(epsilon), "epsilon": epsilon}
    return parse_scenario(document, TUMOUR_SCENARIO.with_name("tumour-audit-bench.toml"))


def tumour_table(work: Path, canaries: int) -> dict[str, Any]:
    from fedward.simulations.study import run_study

    arms: dict[str, list[dict[str, Any]]] = {}
    for arm, epsilon in TUMOUR_ARMS.items():
        start = time.perf_counter()
        run_dir = work / f"tumour-{arm.replace(' ', '').replace('=', '').replace('ε', 'eps')}"
        payload = run_study(tumour_scenario(epsilon), run_dir, baselines=False, audit=canaries)
        seconds = time.perf_counter() - start
        overall = payload["federated"]["overall"]
        result = {
            "seed": 0,
            "wall-seconds": round(seconds, 1),
            "accuracy": overall.get("accuracy"),
            **row(payload["empirical-privacy"]),
        }
        arms[arm] = [result]
        log(f"tumour {arm}: bounds {result['bounds']}, claimed {result['claimed-epsilon']}, "
            f"MIA AUC {result['mia-auc']:.3f}, accuracy {result['accuracy']} ({seconds:.0f} s)")  # fmt: skip
    dp_ok = {
        arm: all(b <= r["claimed-epsilon"] for r in runs for b in r["bounds"].values())
        for arm, runs in arms.items()
        if arm.startswith("DP")
    }
    return {
        "setting": {**TUMOUR_CHANGES, "canaries-asked": canaries, "seeds": [0], "baselines": False},
        "arms": arms,
        "verdicts": {
            "no-dp-bounds": [r["epsilon-lower-bound"] for r in arms.get("no DP", [])],
            "dp-bounds-at-most-claimed": dp_ok,
        },
    }


# ------------------------------------------------------------------ (c) cost


def cost(work: Path, repeats: int) -> dict[str, Any]:
    arms = {"fedward sim ckd": ["ckd"], "fedward sim audit": ["audit"]}
    seconds: dict[str, list[float]] = {arm: [] for arm in arms}
    for repeat in range(repeats):
        for arm, words in arms.items():
            name = f"cost-{words[0]}-{repeat}"
            command = [FEDWARD, "sim", *words, "--name", name, "--runs-dir", str(work)]
            seconds[arm].append(round(timed(command, work / f"{name}.log"), 2))
            log(f"cost {arm} #{repeat + 1}: {seconds[arm][-1]:.1f} s")
    medians = {arm: statistics.median(values) for arm, values in seconds.items()}
    ratio = medians["fedward sim audit"] / medians["fedward sim ckd"]
    return {
        "seconds": seconds,
        "median-seconds": medians,
        "ratio": round(ratio, 2),
        "target-ratio": 5.0,
        "met": ratio <= 5.0,
    }


# ------------------------------------------------------------------ tables


def _fmt(values: list[Any], spec: str = ".2f") -> str:
    return " / ".join("n/a" if v is None else format(v, spec) for v in values)


def print_table(title: str, arms: dict[str, list[dict[str, Any]]]) -> None:
    print(f"\n{title} (values per seed, a / b / c)")
    head = ("arm", "claimed ε", "coordinator", "final model", "knowing seed", "MIA AUC", "TPR@1% FPR", "leak")
    print(" | ".join(head))
    for arm, runs in arms.items():
        claimed = [r["claimed-epsilon"] for r in runs]
        knowing = [r["bounds"].get("coordinator-knowing-seed") for r in runs]
        print(" | ".join([
            arm,
            "∞" if claimed[0] is None else _fmt(claimed),
            _fmt([r["bounds"]["coordinator"] for r in runs]),
            _fmt([r["bounds"]["final-model"] for r in runs]),
            "–" if all(k is None for k in knowing) else _fmt(knowing),
            _fmt([r["mia-auc"] for r in runs], ".3f"),
            _fmt([r["mia-tpr-at-1pct-fpr"] for r in runs], ".3f"),
            " / ".join("yes" if r["leak"] else "no" for r in runs),
        ]))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parts = ["ckd", "tumour", "cost"]
    parser.add_argument("--parts", nargs="+", choices=parts, default=parts)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--ckd-arms", nargs="+", choices=list(CKD_IDS), default=list(CKD_IDS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tumour-canaries", type=int, default=1000)
    args = parser.parse_args()
    machine = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "note": "CPU only; 2 cores shared with other helpers' benchmarks and tests while this ran",
    }
    results: dict[str, Any] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="privacy-audit-") as tmp:
        work = Path(tmp)
        for part in args.parts:
            load = os.getloadavg()[0]
            part_start = time.perf_counter()
            log(f"part {part} (load average {load:.2f})")
            if part == "ckd":
                results["ckd"] = ckd_table(work, args.seeds, [CKD_IDS[a] for a in args.ckd_arms])
                print_table("CKD audit", results["ckd"]["arms"])
            elif part == "tumour":
                results["tumour"] = tumour_table(work, args.tumour_canaries)
                print_table("Tumour audit", results["tumour"]["arms"])
            else:
                results["cost"] = cost(work, args.repeats)
                print(f"\ncost: {results['cost']['median-seconds']}, ratio {results['cost']['ratio']}×")
            results[part] |= {
                "wall-seconds": round(time.perf_counter() - part_start, 1),
                "load-average-at-start": round(load, 2),
                "load-average-at-end": round(os.getloadavg()[0], 2),
            }
            saved = json.loads(OUT.read_text()) if OUT.exists() else {}  # other parts: from other runs
            if part == "ckd" and "ckd" in saved:  # some arms rerun: keep the others
                arms = saved["ckd"]["arms"] | results["ckd"]["arms"]
                arms = {a: arms[a] for a in CKD_ARMS if a in arms}
                results["ckd"] |= {"arms": arms, "verdicts": ckd_verdicts(arms)}
            saved |= {"machine": machine, part: results[part]}
            OUT.write_text(json.dumps(saved, indent=2, ensure_ascii=False) + "\n")
    log(f"done in {time.perf_counter() - started:.0f} s; written to {OUT}")


if __name__ == "__main__":
    main()
