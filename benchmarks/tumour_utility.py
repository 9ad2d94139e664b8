"""Tumour utility: pooled vs federated vs federated with DP (ε = 8, 3), and the DP step cost of each model.

One 4-site phantom data set (DICOM series with scanner shift and label skew, `fedward sim tumour`'s
generator, one seed) serves every arm of both tasks, so all arms see the same patients and the same
per-site held-out splits:

- **pooled**: the sites' training splits together, trained in-process with the shared loop
  (`simulations/baselines.py:pooled_baseline`: same model, initialisation, optimiser, batch and
  `rounds × local-epochs` epochs), evaluated on every site's held-out split and pooled with `task.pool`,
  so its metrics are defined exactly as the federation's;
- **federated**: the real Flower simulation runtime (`simulations/runner.py:run_simulation`, the path of
  `fedward sim tumour`, with the run config that command builds), FedAvg, without DP and with DP-Adam
  at ε = 8 and ε = 3 per site; seconds per round are the median of `round-seconds` in `metrics.jsonl`.

Tasks: `tumour` (4 classes: accuracy, macro one-vs-rest ROC AUC) and `tumour-seg` (whole-tumour UNet:
Dice, voxel Dice, HD95). Then the DP / non-DP step-time ratio per model (cnn, densenet121 in 2D at
32², unet) on CPU, measured as `benchmarks/dp_step_time.py` does (one epoch of the shared loop per
sample, median over repeats after a warm-up; modes interleaved so the machine's load hits all alike),
for Opacus' default per-sample hooks (what `common/training.py` runs), ghost clipping
(`grad_sample_mode="ghost"` with the wrapped criterion) and functorch, at several batch sizes.

    python -P benchmarks/tumour_utility.py   # -P: benchmarks/strategies.py would shadow the package

Parts can run apart and be merged (BENCHMARKS.md's numbers were made so; about 25 min on 2 busy cores):

    python -P benchmarks/tumour_utility.py --tasks tumour --step-models --out cls.json
    python -P benchmarks/tumour_utility.py --tasks tumour-seg --step-models --out seg.json
    python -P benchmarks/tumour_utility.py --tasks tumour-seg --batch-size 16 --label=-b16 --step-models ...
    python -P benchmarks/tumour_utility.py --tasks --threads 2 --step-models cnn unet densenet121 \
        --step-batches 4 16 32 --out steps.json            # (and --device cuda on a GPU machine)
    python -P benchmarks/tumour_utility.py --tasks --step-models --merge cls.json seg.json steps.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedward.common.config import RunConfig
from fedward.common.imaging_models import build_classifier, build_segmenter
from fedward.common.privacy import DPConfig
from fedward.common.tasks import get_task
from fedward.common.training import LocalTraining, local_mechanism, make_optimizer, train_model

METRICS = {"tumour": ("accuracy", "roc-auc"), "tumour-seg": ("dice", "dice-voxels", "hd95")}
# target: (metric, federated no-DP ≥ 0.99 × pooled, federated DP ε = 3 ≥ 0.95 × pooled)
TARGET_METRICS = {"tumour": ("roc-auc",), "tumour-seg": ("dice",)}
MODES = ("non-dp", "hooks", "ghost", "functorch")


# ---------------------------------------------------------------------------------------------- utility


def base_config(task: str, args: argparse.Namespace, data_root: Path, work: Path) -> RunConfig:
    """The run config `fedward sim tumour [--segmentation]` builds for these options."""
    return RunConfig(
        task=task,
        num_server_rounds=args.rounds,
        min_sites=args.sites,
        seed=args.seed,
        model="unet" if task == "tumour-seg" else "cnn",
        local_epochs=args.local_epochs[task],
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


def make_sites(args: argparse.Namespace, data_root: Path) -> None:
    """The phantom sites, written once by `fedward sim tumour`'s generator (DICOM + masks)."""
    from fedward.common.data.mri.sample import parse_contrasts
    from fedward.simulations.phantoms import PhantomSpec, generate_sites

    spec = PhantomSpec(size=args.size, slices=args.slices, contrasts=parse_contrasts(args.contrasts))
    generate_sites(
        data_root, args.sites, args.patients, fmt="dicom", spec=spec, skew=args.skew, seed=args.seed
    )


def pooled_arm(config: RunConfig, data_root: Path, sites: int) -> dict[str, Any]:
    """Centralised training on the union of training splits; each site's held-out split, pooled."""
    from fedward.simulations.baselines import load_sites, pooled_baseline  # the utility arms only

    loaded = load_sites(config, data_root, sites)
    result = pooled_baseline(config, loaded, device=torch.device("cpu"))
    return {
        "overall": _plain(result["overall"]),
        "num-train": result["num-train"],
        "test-patients": {s.site_id: int(s.report["test-patients"]) for s in loaded},
        "train-patients": {s.site_id: int(s.report["train-patients"]) for s in loaded},
        "steps": result["steps"],
        "seconds": result["seconds"],
        # one "round" of pooled training = local-epochs epochs over the union
        "round-seconds-median": result["seconds"] / config.num_server_rounds,
    }


def federated_arm(config: RunConfig, sites: int, work: Path) -> dict[str, Any]:
    """One real simulation; final pooled metrics, ε spent and per-round seconds."""
    from fedward.simulations.runner import run_simulation

    t0 = time.perf_counter()
    run_dir = Path(config.runs_dir) / config.run_name
    try:
        run_simulation(config.to_flower(), sites, log_file=work / f"{config.run_name}.log")
    except Exception as exc:  # a failed arm is reported, the others still run
        return {"error": str(exc), "seconds": time.perf_counter() - t0}
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary.get("stopped") and not summary["overall"]:
        log = (work / f"{config.run_name}.log").read_text(errors="replace")
        cause = next((line for line in log.splitlines() if line.startswith("RuntimeError")), "")
        return {"error": f"{summary['stopped']} ({cause})", "seconds": time.perf_counter() - t0}
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    round_seconds = [r["round-seconds"] for r in rounds]
    eps = [s.get("epsilon") for s in summary["sites"].values() if s.get("epsilon") is not None]
    per_round = {k: [r["overall"].get(k) for r in rounds] for k in ("accuracy", "roc-auc", "dice")}
    return {
        "overall": _plain(summary["overall"]),
        "per-round": {k: v for k, v in per_round.items() if any(x is not None for x in v)},
        "epsilon-max": max(eps) if config.dp and eps else None,
        "round-seconds": round_seconds,
        "round-seconds-median": statistics.median(round_seconds),
        "server-seconds": summary["wall-seconds"],
        "stopped": summary.get("stopped"),
        "seconds": time.perf_counter() - t0,
    }


def _plain(metrics: dict[str, Any]) -> dict[str, float]:
    """The headline metrics only (no confusion counts or intervals)."""
    keep = ("accuracy", "roc-auc", "f1", "dice", "dice-voxels", "hd95", "loss", "num-examples")
    return {k: float(metrics[k]) for k in keep if k in metrics}


def run_task(task: str, args: argparse.Namespace, data_root: Path, work: Path, done: dict) -> dict:
    """Every arm of one task; results are written after each arm."""
    base = base_config(task, args, data_root, work)
    arms = done.setdefault(task, {})
    if "pooled" in args.arms:
        arms["pooled" + args.label] = pooled_arm(base, data_root, args.sites)
        report(task, "pooled" + args.label, arms["pooled" + args.label], args)
    plans = [("federated", False, 0.0)] + [(f"federated-dp-eps{e:g}", True, e) for e in args.epsilons]
    for name, dp, eps in plans:
        if name not in args.arms and not (dp and "dp" in args.arms):
            continue
        config = base.model_copy(
            update={"dp": dp, "dp_target_epsilon": eps or 3.0, "run_name": f"{task}-{name}"}
        )
        arms[name + args.label] = federated_arm(config, args.sites, work)
        report(task, name + args.label, arms[name + args.label], args)
    return arms


def report(task: str, arm: str, result: dict, args: argparse.Namespace) -> None:
    """One progress line, and the partial results written."""
    shown = {k: round(v, 4) for k, v in result.get("overall", {}).items()}
    print(f"{task} {arm}: {shown} {result.get('error', '')} {result['seconds']:.0f} s", flush=True)
    write(args)


# ------------------------------------------------------------------------------------------- step time


class PerSampleDice(nn.Module):
    """The segmentation task's Dice loss with a `reduction` Opacus' ghost-clipping criterion can switch."""

    def __init__(self) -> None:
        super().__init__()
        from monai.losses import DiceLoss

        self.dice = DiceLoss(to_onehot_y=True, softmax=True, reduction="none")
        self.reduction = "mean"

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_sample = self.dice(output, target.long()).flatten(1).mean(dim=1)
        return per_sample.mean() if self.reduction == "mean" else per_sample


def step_models(size: int, depth: int, channels: int) -> dict[str, dict[str, Any]]:
    """Each model with its input shape, its task's loss and a criterion for ghost clipping."""
    cls_loss, seg_loss = get_task("tumour").loss, get_task("tumour-seg").loss
    return {
        "cnn": {
            "build": lambda: build_classifier("cnn", 3, channels, 4),
            "shape": (channels, size, size, depth),
            "target": lambda n, g: torch.randint(0, 4, (n,), generator=g),
            "loss": cls_loss,
            "criterion": nn.CrossEntropyLoss,
            "input": f"3D {size}x{size}x{depth}",
        },
        "densenet121": {  # 2D at 32², the smallest input it takes (downsamples 32-fold)
            "build": lambda: build_classifier("densenet121", 2, channels, 4),
            "shape": (channels, 32, 32),
            "target": lambda n, g: torch.randint(0, 4, (n,), generator=g),
            "loss": cls_loss,
            "criterion": nn.CrossEntropyLoss,
            "input": "2D 32x32",
        },
        "unet": {
            "build": lambda: build_segmenter("unet", 3, channels),
            "shape": (channels, size, size, depth),
            "target": lambda n, g: (torch.rand(n, 1, size, size, depth, generator=g) > 0.9).to(torch.uint8),
            "loss": seg_loss,
            "criterion": PerSampleDice,
            "input": f"3D {size}x{size}x{depth}",
        },
    }


def variant_epoch(
    model: nn.Module,
    data: TensorDataset,
    criterion: nn.Module,
    local: LocalTraining,
    mode: str,
    device: torch.device,
) -> int:
    """One epoch of `common/training.py`'s private loop with another Opacus `grad_sample_mode`."""
    from opacus import PrivacyEngine

    torch.manual_seed(local.seed)
    loader = DataLoader(
        data, batch_size=local.batch_size, shuffle=True, generator=torch.Generator().manual_seed(local.seed)
    )
    model.to(device).train()
    optimizer = make_optimizer(local.optimizer, model, local.lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant="rdp")
        made = engine.make_private(
            module=model, optimizer=optimizer, criterion=criterion, data_loader=loader,
            noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=True, grad_sample_mode=mode,
        )  # fmt: skip
    if mode == "ghost":
        module, optimizer, loss_fn, loader = made
    else:
        module, optimizer, loader = made
        loss_fn = criterion
    steps = 0
    for _ in range(local.epochs):
        for xb, yb in loader:
            steps += 1
            if len(yb) == 0:  # an empty Poisson batch: a noise-only step, nearly free either way
                continue
            optimizer.zero_grad()
            loss = loss_fn(module(xb.to(device)), yb.to(device))
            loss.backward()
            optimizer.step()
    module.remove_hooks() if hasattr(module, "remove_hooks") else None
    return steps


def time_model(name: str, spec: dict[str, Any], batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """Median ms per step of each mode at batch size `batch`; modes interleaved within each repeat."""
    g = torch.Generator().manual_seed(0)
    n = batch * args.step_batches_per_epoch
    data = TensorDataset(torch.randn(n, *spec["shape"], generator=g), spec["target"](n, g))
    private = DPConfig(noise_multiplier=1.0, accountant="rdp")
    device = torch.device(args.device)
    per_step: dict[str, list[float]] = {m: [] for m in args.modes}
    errors: dict[str, str] = {}
    runners: dict[str, Callable[[nn.Module, LocalTraining], int]] = {
        "non-dp": lambda m, local: train_model(m, data, spec["loss"], local, None, device=device).steps,
        "hooks": lambda m, local: (
            train_model(
                m,
                data,
                spec["loss"],
                local,
                private,
                mechanism=local_mechanism(private, n, local),
                device=device,
            ).steps
        ),
        "ghost": lambda m, local: variant_epoch(m, data, spec["criterion"](), local, "ghost", device),
        "functorch": lambda m, local: variant_epoch(m, data, spec["criterion"](), local, "functorch", device),
    }
    for rep in range(args.step_repeats + 1):
        local = LocalTraining(
            epochs=args.step_epochs, batch_size=batch, lr=args.lr, seed=rep, optimizer="adam"
        )
        for mode in args.modes:
            if mode in errors:
                continue
            torch.manual_seed(rep)
            model = spec["build"]()
            _sync(device)
            t0 = time.perf_counter()
            try:
                steps = runners[mode](model, local)
                _sync(device)
            except Exception as exc:  # an unsupported mode is reported, not fatal
                errors[mode] = f"{type(exc).__name__}: {exc}"[:300]
                continue
            if rep:  # the first call warms up
                per_step[mode].append((time.perf_counter() - t0) / steps)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    row: dict[str, Any] = {
        "model": name, "input": spec["input"], "batch": batch, "device": where, "errors": errors
    }  # fmt: skip
    plain = statistics.median(per_step["non-dp"]) if per_step.get("non-dp") else math.nan
    for mode, values in per_step.items():
        if values:
            row[f"{mode}-ms"] = 1000 * statistics.median(values)
            if mode != "non-dp":
                row[f"{mode}-ratio"] = statistics.median(values) / plain
    print(
        f"step {name:>11} B={batch:<3} "
        + "  ".join(f"{m} {row[f'{m}-ms']:.1f} ms" for m in args.modes if f"{m}-ms" in row)
        + "  ratios "
        + "  ".join(f"{m} {row[f'{m}-ratio']:.2f}" for m in args.modes if f"{m}-ratio" in row)
        + (f"  errors {errors}" if errors else ""),
        flush=True,
    )
    return row


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every model at every batch size."""
    channels = len(args.contrasts.split(","))
    specs = step_models(args.size, args.depth, channels)
    rows = []
    for name in args.step_models:
        for batch in args.step_batches:
            rows.append(time_model(name, specs[name], batch, args))
            RESULTS.setdefault("step-time", []).append(rows[-1])
            write(args)
    return rows


# -------------------------------------------------------------------------------------------- output

RESULTS: dict[str, Any] = {}


def targets(utility: dict[str, dict[str, dict]], steps: list[dict]) -> list[dict[str, Any]]:
    """Each target, its measured value and whether it is met."""
    out = []
    for task, arms in utility.items():
        pooled = arms.get("pooled", {}).get("overall", {})
        for metric in TARGET_METRICS[task]:
            for arm, factor in (("federated", 0.99), ("federated-dp-eps3", 0.95)):
                value = arms.get(arm, {}).get("overall", {}).get(metric)
                if value is None or metric not in pooled:
                    continue
                ratio = value / pooled[metric] if pooled[metric] else math.nan
                out.append(
                    {"target": f"{task} {arm} {metric} ≥ {factor:.0%} of pooled", "value": ratio,
                     "met": bool(ratio >= factor)}
                )  # fmt: skip
    for row in steps:
        if "hooks-ratio" in row:
            best = min(
                (m for m in MODES[1:] if f"{m}-ratio" in row),
                key=lambda m: row[f"{m}-ratio"],
                default="hooks",
            )
            out.append(
                {"target": f"DP step ≤ 2× non-DP, {row['device']}, {row['model']} B={row['batch']} "
                           f"(hooks; best: {best})",
                 "value": row["hooks-ratio"], "best": row[f"{best}-ratio"],
                 "met": bool(row["hooks-ratio"] <= 2), "met-with-best": bool(row[f"{best}-ratio"] <= 2)}
            )  # fmt: skip
    return out


def markdown(args: argparse.Namespace) -> str:
    """The BENCHMARKS.md tables."""
    utility = RESULTS.get("utility", {})
    lines = [
        f"Tumour phantoms (DICOM, scanner shift, Dirichlet({args.skew:g}) class mix), {args.sites} sites × "
        f"{args.patients} patients, {args.size}²×{args.depth} input, contrasts {args.contrasts}, "
        f"{args.rounds} rounds × local epochs {args.local_epochs['tumour']} (classification, cnn) / "
        f"{args.local_epochs['tumour-seg']} (segmentation, unet), Adam lr {args.lr:g}, batch "
        f"{args.batch_size}, FedAvg, seed {args.seed}",
        "",
        "| task | arm | accuracy | macro AUC | Dice | voxel Dice | HD95 mm | ε max | s / round | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(value: Any, digits: int = 3) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        return f"{value:.{digits}f}"

    for task, arms in utility.items():
        for arm, r in arms.items():
            if "error" in r:
                lines.append(
                    f"| {task} | {arm} | error: {r['error'][:60]} | | | | | | | {r['seconds']:.0f} |"
                )
                continue
            ov = r["overall"]
            lines.append(
                f"| {task} | {arm} | {cell(ov.get('accuracy'))} | {cell(ov.get('roc-auc'))} "
                f"| {cell(ov.get('dice'))} | {cell(ov.get('dice-voxels'))} | {cell(ov.get('hd95'), 1)} "
                f"| {cell(r.get('epsilon-max'), 2)} | {r['round-seconds-median']:.1f} | {r['seconds']:.0f} |"
            )
    steps = RESULTS.get("step-time", [])
    if steps:
        lines += [
            "",
            f"DP-SGD step time, median over {args.step_repeats} "
            f"calls of the training loop ({args.step_epochs} epochs × {args.step_batches_per_epoch} steps "
            "each, set-up included) after a warm-up, Adam, σ = 1, C = 1, "
            "Poisson sampling; ratio = DP / non-DP",
            "",
            "| device | model | input | batch | non-DP ms | hooks ms (ratio) | ghost ms (ratio) "
            "| functorch ms (ratio) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in steps:
            cells = []
            for mode in ("hooks", "ghost", "functorch"):
                if f"{mode}-ms" in row:
                    cells.append(f"{row[f'{mode}-ms']:.1f} ({row[f'{mode}-ratio']:.2f}×)")
                else:
                    cells.append("error" if mode in row["errors"] else "–")
            lines.append(
                f"| {row['device']} | {row['model']} | {row['input']} | {row['batch']} "
                f"| {cell(row.get('non-dp-ms'), 1)} | " + " | ".join(cells) + " |"
            )
    checks = targets(utility, steps)
    if checks:
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        for c in checks:
            extra = f" (best lever {c['best']:.2f}×)" if "best" in c else ""
            lines.append(f"| {c['target']} | {c['value']:.3f}{extra} | {'yes' if c['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def write(args: argparse.Namespace) -> None:
    """JSON and Markdown of everything measured so far."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {
        "benchmark": "tumour_utility",
        "settings": settings,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **RESULTS,
        "targets": targets(RESULTS.get("utility", {}), RESULTS.get("step-time", [])),
    }
    args.out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    args.out.with_suffix(".md").write_text(markdown(args))


def main() -> None:
    """Parse options, run the utility arms of each task and the step timings, print and write."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--patients", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=40, help="classification (the sim's default)")
    parser.add_argument("--seg-local-epochs", type=int, default=20, help="segmentation")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--depth", type=int, default=RunConfig().image_depth)
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--skew", type=float, default=2.0)
    parser.add_argument("--contrasts", default="t1ce,flair")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 3.0])
    parser.add_argument("--tasks", nargs="*", default=["tumour", "tumour-seg"])
    parser.add_argument(
        "--arms", nargs="+", default=["pooled", "federated", "dp"], help="pooled, federated, dp (all ε)"
    )
    parser.add_argument("--label", default="", help="suffix of the arm names (a variant of the settings)")
    parser.add_argument("--step-models", nargs="*", default=["cnn", "densenet121", "unet"])
    parser.add_argument("--step-batches", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--step-batches-per-epoch", type=int, default=4)
    parser.add_argument("--step-epochs", type=int, default=2, help="epochs per timed call (one setup)")
    parser.add_argument("--step-repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="where the step timings run (cpu, cuda)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="*",
        default=[],
        help="earlier results (JSON) to include: utility, step time",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tumour_utility.json"))
    args = parser.parse_args()
    if "non-dp" not in args.modes:
        args.modes.insert(0, "non-dp")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.local_epochs = {"tumour": args.local_epochs, "tumour-seg": args.seg_local_epochs}
    started = time.perf_counter()
    for earlier in args.merge:
        old = json.loads(earlier.read_text())
        for task, arms in old.get("utility", {}).items():
            RESULTS.setdefault("utility", {}).setdefault(task, {}).update(arms)
        RESULTS.setdefault("step-time", []).extend(old.get("step-time", []))
        RESULTS.setdefault("merged-settings", []).append(old.get("settings", {}))
    if args.tasks:
        utility = RESULTS.setdefault("utility", {})
        with tempfile.TemporaryDirectory(prefix="fedward-tumour-utility-") as tmp:
            work = Path(tmp)
            t0 = time.perf_counter()
            make_sites(args, work / "sites")
            RESULTS["data-seconds"] = time.perf_counter() - t0
            for task in args.tasks:
                run_task(task, args, work / "sites", work, utility)
    if args.step_models:
        run_steps(args)
    RESULTS["wall-seconds"] = time.perf_counter() - started
    write(args)
    print(markdown(args))


if __name__ == "__main__":
    main()
