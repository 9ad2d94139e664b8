"""Tumour utility: pooled vs federated vs federated DP (ε per site), mean ± sd over seeds, and DP step cost.

Per seed, one phantom data set (`fedward.simulations.phantoms`, each site its own simulated scanner and a
Dirichlet class mix; `--site-sizes` patients per site, unequal as hospitals are) serves every arm, so all
arms see the same patients and the same per-site held-out splits (20 % of patients, stratified):

- **pooled**: the union of the sites' training splits, trained in-process with the shared loop
  (`simulations/baselines.py:pooled_baseline`: same model, initialisation, optimiser, batch and
  `rounds × local-epochs` epochs, no DP), evaluated at every site and pooled with `task.pool`;
- **federated**: the real Flower simulation runtime (`simulations/runner.py:run_simulation`, the path of
  `fedward sim tumour`), FedAvg, without DP and with DP-Adam at each `--epsilons` value per site
  (patient-level, δ = the largest power of ten ≤ 1/(10 n), PRV, Poisson sampling, σ calibrated for the
  planned steps); s / round is the median `round-seconds` of `metrics.jsonl`.

Metrics: macro one-vs-rest ROC AUC (the example-weighted mean of the sites' values, as every federated
summary) and balanced accuracy (macro sensitivity from the summed confusion counts: sklearn's
`balanced_accuracy_score` of the pooled predictions). Then the DP / non-DP step-time ratio of the default
image model (`--step-models`), measured on the shared loop with Opacus' per-sample hooks and with the
mode the tumour tasks use (functorch).

    nice -n 10 python -P benchmarks/tumour_utility.py --site-sizes 40,120,250,400 --seeds 0,1,2

(-P: benchmarks/strategies.py would shadow the package.) Results: benchmarks/results/tumour_utility.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from fedward.common.config import RunConfig
from fedward.common.imaging_models import build_classifier
from fedward.common.privacy import DPConfig
from fedward.common.tasks import get_task
from fedward.common.training import LocalTraining, local_mechanism, train_model

HEADLINE = {
    "tumour": ("roc-auc", "balanced-accuracy", "accuracy"),
    "tumour-seg": ("dice", "dice-voxels", "hd95"),
}
# (arm, metric, fraction of pooled the mean over seeds must reach)
TARGETS = {
    "tumour": [("federated", "roc-auc", 0.99), ("dp-eps3", "roc-auc", 0.95), ("dp-eps1", "roc-auc", 0.90)],
    "tumour-seg": [("federated", "dice", 0.97), ("dp-eps8", "dice", 0.85)],
}
STEP_MODES = ("non-dp", "hooks", "functorch")


# ---------------------------------------------------------------------------------------------- utility


def make_sites(args: argparse.Namespace, data_root: Path, seed: int) -> None:
    """One phantom site per entry of `--site-sizes`, written as `fedward sim tumour` writes them."""
    from fedward.simulations.phantoms import PhantomSpec, generate_site

    extra: dict[str, Any] = {}
    if "anatomy" in {f.name for f in dataclasses.fields(PhantomSpec)}:
        extra["anatomy"] = args.anatomy
    elif args.anatomy != "simple":
        raise SystemExit(f"--anatomy {args.anatomy}: this checkout's PhantomSpec has no anatomy field yet")
    spec = PhantomSpec(size=args.size, slices=args.depth, contrasts=tuple(args.contrasts.split(",")), **extra)
    for i, patients in enumerate(args.site_sizes):
        generate_site(
            data_root / f"site-{i}", i, patients, fmt=args.format, spec=spec, skew=args.skew, seed=seed
        )


def base_config(task: str, args: argparse.Namespace, data_root: Path, work: Path, seed: int) -> RunConfig:
    """The run config `fedward sim tumour [--segmentation]` builds for these options."""
    return RunConfig(
        task=task,
        num_server_rounds=args.rounds,
        min_sites=len(args.site_sizes),
        seed=seed,
        model=args.seg_model if task == "tumour-seg" else args.model,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer="adam",
        strategy="fedavg",
        dp=False,
        data_root=str(data_root),
        runs_dir=str(work / "runs"),
        image_size=args.size,
        image_depth=args.depth,
        mri_contrasts=args.contrasts,
    )


def pooled_arm(config: RunConfig, data_root: Path, sites: int) -> dict[str, Any]:
    """Centralised training on the union of training splits; each site's held-out split, pooled."""
    from fedward.simulations.baselines import load_sites, pooled_baseline  # the utility arms only

    t0 = time.perf_counter()
    loaded = load_sites(config, data_root, sites)
    result = pooled_baseline(config, loaded, device=torch.device("cpu"))
    return {
        "overall": _plain(result["overall"]),
        "train-patients": {s.site_id: int(s.report["train-patients"]) for s in loaded},
        "test-patients": {s.site_id: int(s.report["test-patients"]) for s in loaded},
        "steps": result["steps"],
        # one "round" of pooled training = local-epochs epochs over the union (no start-up, no loading)
        "round-seconds-median": result["seconds"] / config.num_server_rounds,
        "seconds": time.perf_counter() - t0,
    }


def federated_arm(config: RunConfig, sites: int, work: Path) -> dict[str, Any]:
    """One real simulation: final pooled metrics, ε spent and seconds per round."""
    from fedward.simulations.runner import run_simulation

    t0 = time.perf_counter()
    run_dir = Path(config.runs_dir) / config.run_name
    log = work / f"{config.run_name}.log"
    try:
        run_simulation(config.to_flower(), sites, log_file=log)
    except Exception as exc:  # a failed arm is reported, the others still run
        return {"error": f"{type(exc).__name__}: {exc}"[:300], "seconds": time.perf_counter() - t0}
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary.get("stopped") and not summary["overall"]:
        return {"error": str(summary["stopped"]), "seconds": time.perf_counter() - t0}
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    eps = [s["epsilon"] for s in summary["sites"].values() if s.get("epsilon") is not None]
    return {
        "overall": _plain(summary["overall"]),
        "per-round-auc": [r["overall"].get("roc-auc") for r in rounds],
        "epsilon-max": max(eps) if config.dp and eps else None,
        "noise-multipliers": sorted(
            s["noise-multiplier"] for s in summary["sites"].values() if s.get("noise-multiplier")
        ),
        "round-seconds-median": statistics.median(r["round-seconds"] for r in rounds),
        "stopped": summary.get("stopped"),
        "seconds": time.perf_counter() - t0,
    }


def _plain(metrics: dict[str, Any]) -> dict[str, float]:
    """The headline metrics only (no confusion counts or intervals)."""
    keep = ("accuracy", "balanced-accuracy", "roc-auc", "f1", "dice", "dice-voxels", "hd95", "num-examples")
    return {k: math.nan if metrics[k] is None else float(metrics[k]) for k in keep if k in metrics}


def arm_names(args: argparse.Namespace) -> list[tuple[str, float | None]]:
    """(arm, ε or None) in run order; pooled is trained in-process."""
    return [("pooled", None), ("federated", None)] + [(f"dp-eps{e:g}", e) for e in args.epsilons]


def run_seed(task: str, args: argparse.Namespace, seed: int, out: dict[str, dict[str, Any]]) -> None:
    """Every arm of `task` on seed `seed`'s data set; results are written after each arm."""
    with tempfile.TemporaryDirectory(prefix="fedward-tumour-utility-") as tmp:
        work = Path(tmp)
        make_sites(args, work / "sites", seed)
        base = base_config(task, args, work / "sites", work, seed)
        sites = len(args.site_sizes)
        for arm, eps in arm_names(args):
            if arm.split("-")[0] not in args.arms:
                continue
            if arm == "pooled":
                result = pooled_arm(base, work / "sites", sites)
            else:
                update = {"run_name": f"{task}-{arm}-s{seed}", "dp": eps is not None}
                if eps is not None:
                    update["dp_target_epsilon"] = eps
                result = federated_arm(base.model_copy(update=update), sites, work)
            out.setdefault(arm, {})[str(seed)] = result
            shown = {k: round(v, 3) for k, v in result.get("overall", {}).items() if k != "num-examples"}
            print(f"{task} seed {seed} {arm}: {shown} {result.get('error', '')} {result['seconds']:.0f} s",
                  flush=True)  # fmt: skip
            write(args)


def mean_sd(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value) and count of the finite values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": math.nan, "sd": math.nan, "n": 0}
    sd = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return {"mean": statistics.fmean(finite), "sd": sd, "n": len(finite)}


def summarise(task: str, per_arm: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per arm: mean ± sd over seeds of each headline metric, s / round and ε max."""
    out: dict[str, dict[str, Any]] = {}
    for arm, seeds in per_arm.items():
        done = [r for r in seeds.values() if "overall" in r]
        row: dict[str, Any] = {
            m: mean_sd([r["overall"].get(m, math.nan) for r in done]) for m in HEADLINE[task]
        }
        row["round-seconds"] = mean_sd([r["round-seconds-median"] for r in done])
        row["epsilon-max"] = max((r["epsilon-max"] for r in done if r.get("epsilon-max")), default=None)
        row["seeds"], row["failed"] = len(done), len(seeds) - len(done)
        out[arm] = row
    return out


def targets(summary: dict[str, dict[str, dict[str, Any]]], steps: list[dict]) -> list[dict[str, Any]]:
    """Each target, its measured value (means over seeds) and whether it is met."""
    out = []
    for task, arms in summary.items():
        for arm, metric, factor in TARGETS[task]:
            pooled, value = arms.get("pooled", {}).get(metric), arms.get(arm, {}).get(metric)
            if not pooled or not value or not pooled["mean"] or math.isnan(pooled["mean"]):
                continue
            ratio = value["mean"] / pooled["mean"]
            out.append({"target": f"{task} {arm} {metric} ≥ {factor:.0%} of pooled (mean over seeds)",
                        "value": ratio, "met": bool(ratio >= factor)})  # fmt: skip
    for row in steps:
        mode = get_task("tumour").grad_sample_mode
        if f"{mode}-ratio" in row:
            out.append({"target": f"DP step ≤ 2× non-DP, {row['device']}, {row['model']} B={row['batch']} "
                                  f"({mode}, the tumour tasks' mode)",
                        "value": row[f"{mode}-ratio"], "met": bool(row[f"{mode}-ratio"] <= 2)})  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------- step time


def time_steps(batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """Median ms per step of the shared loop for the classifier `--model` at batch `batch`: non-DP, and DP
    with each per-sample gradient mode; modes interleaved within each repeat (the machine's load hits
    all alike), the first repeat a warm-up."""
    channels = len(args.contrasts.split(","))
    loss = get_task("tumour").loss
    g = torch.Generator().manual_seed(0)
    n = batch * args.step_batches_per_epoch
    data = TensorDataset(
        torch.randn(n, channels, args.size, args.size, args.depth, generator=g),
        torch.randint(0, 4, (n,), generator=g),
    )
    private = DPConfig(noise_multiplier=1.0, accountant="rdp")
    per_step: dict[str, list[float]] = {m: [] for m in STEP_MODES}
    for rep in range(args.step_repeats + 1):
        local = LocalTraining(
            epochs=args.step_epochs, batch_size=batch, lr=args.lr, seed=rep, optimizer="adam"
        )
        for mode in STEP_MODES:
            torch.manual_seed(rep)
            model = build_classifier(args.model, 3, channels, 4)
            t0 = time.perf_counter()
            if mode == "non-dp":
                steps = train_model(model, data, loss, local, None).steps
            else:
                mechanism = local_mechanism(private, n, local)
                steps = train_model(
                    model, data, loss, local, private, mechanism=mechanism, grad_sample_mode=mode
                ).steps
            if rep:
                per_step[mode].append((time.perf_counter() - t0) / steps)
    row: dict[str, Any] = {"model": args.model, "input": f"3D {args.size}²×{args.depth}", "batch": batch,
                           "device": f"cpu x{torch.get_num_threads()}"}  # fmt: skip
    plain = statistics.median(per_step["non-dp"])
    for mode, values in per_step.items():
        row[f"{mode}-ms"] = 1000 * statistics.median(values)
        if mode != "non-dp":
            row[f"{mode}-ratio"] = statistics.median(values) / plain
    times = "  ".join(f"{m} {row[f'{m}-ms']:.1f} ms" for m in STEP_MODES)
    ratios = "  ".join(f"{m} {row[f'{m}-ratio']:.2f}" for m in STEP_MODES[1:])
    print(f"step {args.model} B={batch}: {times}  ratios {ratios}", flush=True)
    return row


# -------------------------------------------------------------------------------------------- output

RESULTS: dict[str, Any] = {"per-seed": {}, "summary": {}, "step-time": []}


def markdown(args: argparse.Namespace) -> str:
    """The table BENCHMARKS.md takes its figures from."""
    lines = [
        f"Sites {','.join(map(str, args.site_sizes))} patients ({args.anatomy} phantoms, {args.format}), "
        f"seeds {','.join(map(str, args.seeds))}; {args.rounds} rounds × {args.local_epochs} local epochs, "
        f"batch {args.batch_size}, Adam lr {args.lr:g}; mean ± sd over seeds",
        "",
        "| task | arm | macro AUC / Dice | balanced accuracy / voxel Dice | s / round | ε max | seeds |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(stat: dict[str, float] | None, digits: int = 3) -> str:
        if not stat or not stat["n"]:
            return "–"
        return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"

    for task, arms in RESULTS["summary"].items():
        first, second = HEADLINE[task][:2]
        for arm, row in arms.items():
            eps = f"{row['epsilon-max']:.2f}" if row["epsilon-max"] else "–"
            failed = f" ({row['failed']} failed)" if row["failed"] else ""
            lines.append(f"| {task} | {arm} | {cell(row[first])} | {cell(row[second])} "
                         f"| {cell(row['round-seconds'], 1)} | {eps} | {row['seeds']}{failed} |")  # fmt: skip
    if RESULTS["step-time"]:
        lines += ["", "| model | input | batch | non-DP ms | hooks ms (ratio) | functorch ms (ratio) |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for r in RESULTS["step-time"]:
            lines.append(f"| {r['model']} | {r['input']} | {r['batch']} | {r['non-dp-ms']:.1f} "
                         f"| {r['hooks-ms']:.1f} ({r['hooks-ratio']:.2f}×) "
                         f"| {r['functorch-ms']:.1f} ({r['functorch-ratio']:.2f}×) |")  # fmt: skip
    checks = targets(RESULTS["summary"], RESULTS["step-time"])
    if checks:
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {c['target']} | {c['value']:.3f} | {'yes' if c['met'] else 'no'} |" for c in checks]
    return "\n".join(lines) + "\n"


def write(args: argparse.Namespace) -> None:
    """JSON (and a Markdown table beside it) of everything measured so far."""
    RESULTS["summary"] = {task: summarise(task, arms) for task, arms in RESULTS["per-seed"].items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {
        "benchmark": "tumour_utility",
        "settings": settings,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **RESULTS,
        "targets": targets(RESULTS["summary"], RESULTS["step-time"]),
    }
    args.out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    args.out.with_suffix(".md").write_text(markdown(args))


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main() -> None:
    """Parse options, run every arm on every seed, then the step timings; print and write."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site-sizes", type=_ints, default=[40, 120, 250, 400], help="patients per site")
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    parser.add_argument("--epsilons", type=_floats, default=[1.0, 3.0, 8.0], help="ε per site over the run")
    parser.add_argument("--anatomy", choices=("simple", "mni"), default="simple")
    parser.add_argument("--format", choices=("nifti", "dicom"), default="nifti")
    parser.add_argument("--tasks", type=lambda s: [t for t in s.split(",") if t], default=["tumour"])
    parser.add_argument("--arms", type=lambda s: s.split(","), default=["pooled", "federated", "dp"],
                        help="pooled, federated, dp (every ε)")  # fmt: skip
    by_recipe = "default: the model's recipe (simulations/recipes.py)"
    parser.add_argument("--rounds", type=int, help=by_recipe)
    parser.add_argument("--local-epochs", type=int, help=by_recipe)
    parser.add_argument("--batch-size", type=int, help=by_recipe)
    parser.add_argument("--lr", type=float, help=by_recipe)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--depth", type=int, default=16, help="slices per volume = model input depth")
    parser.add_argument("--skew", type=float, default=2.0)
    parser.add_argument("--contrasts", default="t1ce,flair")
    parser.add_argument("--model", default="features", help="tumour classifier: features, cnn, densenet121")
    parser.add_argument("--seg-model", default="unet", help="tumour segmenter: unet, voxel-features")
    parser.add_argument("--step-batches", type=_ints, default=[], help="batch sizes of the step timing")
    parser.add_argument("--step-batches-per-epoch", type=int, default=4)
    parser.add_argument("--step-epochs", type=int, default=1, help="epochs per timed call (one setup)")
    parser.add_argument("--step-repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tumour_utility.json"))
    args = parser.parse_args()
    from fedward.simulations.recipes import recipe

    # What `fedward sim tumour [--segmentation] --model M` trains with, unless given (both tasks: the
    # classifier's recipe)
    plan = recipe(args.seg_model if args.tasks == ["tumour-seg"] else args.model)
    for key in ("rounds", "local_epochs", "batch_size", "lr"):
        if getattr(args, key) is None:
            setattr(args, key, getattr(plan, key))
    started = time.perf_counter()
    for task in args.tasks:
        for seed in args.seeds:
            run_seed(task, args, seed, RESULTS["per-seed"].setdefault(task, {}))
    for batch in args.step_batches:
        RESULTS["step-time"].append(time_steps(batch, args))
        write(args)
    RESULTS["wall-seconds"] = time.perf_counter() - started
    write(args)
    print(markdown(args))


if __name__ == "__main__":
    main()
