"""Tail averaging of the global model: does averaging the last rounds' global models beat the last one?

Free post-processing under DP (it uses only models the coordinator already holds; De et al. 2022 average
the iterates of DP training the same way). For each real Flower simulation this benchmark keeps every
round's global model, forms

- `last`: the final global model (what the run reports),
- `mean-k`: the mean of the last k global models (k = 2, 3, 5),
- `ema-β`: an exponential moving average over all rounds, `ema_r = β ema_(r-1) + (1 - β) w_r`, `ema_1 = w_1`,

and evaluates each as the federated summary does: the run's own sites (`simulations/baselines.py:load_sites`
with the run's config), each site's held-out split (`task.datasets`), the site's model hook, `task.evaluate`
at every site and `task.pool` over them (the `last` row must equal the run's summary.json, and is checked).

Round models: a run directory keeps only its newest checkpoint (server/checkpoint_store.py removes older
arrays files), so a tap thread copies each `checkpoint-round-NNNN.safetensors` (and `checkpoint.json`)
while the run goes; the arrays are decoded with the checkpoint codec, and the last round's is checked
against the verified checkpoint (`RoundCheckpoint.load`).

Runs (`--parts`, in the order given; `mni:E` runs ε = E only):

- `mni`: 4 sites of 40/120/250/400 MNI-anatomy phantoms (`tumour_utility.make_sites` / `base_config` /
  `federated_arm`), DP at each `--epsilons`, seeds `--seeds`, recipe of the `features` v2 benchmark
  (20 rounds × 1 epoch, batch 64, Adam 0.03). Pooled reference: `--pooled-from` (the v2 benchmark's pooled
  arm, same sites, seeds and recipe; pooled training involves no federation, hence no tail to average).
- `twin`: `fedward sim tumour --patients 120 --seed S` (3 sites × 120 simple phantoms, every other option its
  default: ε = 3) and its `--no-dp` twin; % = private / no-DP of the same variant.

    nice -n 10 python -P benchmarks/tail_average.py --parts mni,twin --seeds 0,1,2

Results: benchmarks/results/tail_average.json (and .md). `--evaluate RUN_DIR TAP_DIR` re-evaluates one run.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import RecordDict
from safetensors.numpy import load as load_arrays

from fedward.common.algorithms.registry import site_hook
from fedward.common.config import RunConfig
from fedward.common.tasks import get_task
from fedward.server.checkpoint import RoundCheckpoint
from fedward.server.checkpoint_codec import decode
from fedward.server.checkpoint_store import ARRAYS_FILE, CHECKPOINT_JSON
from fedward.server.rundir import SUMMARY_FILE, RunDirectory
from fedward.simulations.baselines import load_sites

HERE = Path(__file__).resolve().parent
Model = dict[str, np.ndarray]
MEAN_KS = (2, 3, 5)
EMA_BETAS = (0.5, 0.7)
VARIANTS = ("last", *(f"mean-{k}" for k in MEAN_KS), *(f"ema-{b:g}" for b in EMA_BETAS))
METRICS = ("roc-auc", "balanced-accuracy")


def _tumour_utility() -> Any:
    """benchmarks/tumour_utility.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("tumour_utility", HERE / "tumour_utility.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------- round models


class CheckpointTap(threading.Thread):
    """Copies every round's checkpoint files out of a run directory while the run writes them (the run
    keeps only the newest); a context manager that stops after a last sweep."""

    def __init__(self, run_dir: Path, tap_dir: Path, poll_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.run_dir, self.tap_dir, self.poll_s = Path(run_dir), Path(tap_dir), poll_s
        self.done = threading.Event()
        shutil.rmtree(self.tap_dir, ignore_errors=True)  # files of an earlier run of the same name
        self.tap_dir.mkdir(parents=True)

    def sweep(self) -> None:
        """Copy arrays files not copied yet, and the current checkpoint.json under its round's name."""
        if not self.run_dir.is_dir():
            return
        for path in self.run_dir.iterdir():
            target = self.tap_dir / path.name
            try:
                if ARRAYS_FILE.fullmatch(path.name) and not target.exists():
                    target.write_bytes(path.read_bytes())  # written atomically: whole once it has its name
                elif path.name == CHECKPOINT_JSON:
                    document = json.loads(path.read_bytes())
                    (self.tap_dir / f"checkpoint-round-{document['round']:04d}.json").write_text(
                        json.dumps(document)
                    )
            except (FileNotFoundError, json.JSONDecodeError):
                continue  # replaced or removed between listing and reading: the next sweep sees its successor

    def run(self) -> None:
        while not self.done.is_set():
            self.sweep()
            time.sleep(self.poll_s)

    def __enter__(self) -> CheckpointTap:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.join()
        self.sweep()


def round_models(run_dir: Path, tap_dir: Path) -> list[Model]:
    """The global model after each round 1..R, from the tapped checkpoint files; the last one checked
    against the run's verified checkpoint. ValueError when a round was missed."""
    final = RoundCheckpoint.load(run_dir)
    if final is None:
        raise ValueError(f"{run_dir}: no checkpoint")
    documents = {int(p.stem[-4:]): json.loads(p.read_text()) for p in tap_dir.glob("checkpoint-round-*.json")}
    reference = documents[final.server_round]
    models = []
    for server_round in range(1, final.server_round + 1):
        path = tap_dir / f"checkpoint-round-{server_round:04d}.safetensors"
        if not path.is_file():
            raise ValueError(f"{tap_dir}: round {server_round} was not tapped")
        data = path.read_bytes()
        document = documents.get(server_round, reference)  # same array names every round (arrays first)
        if server_round in documents and hashlib.sha256(data).hexdigest() != document["arrays-sha256"]:
            raise ValueError(f"{path}: sha256 differs from its checkpoint.json")
        models.append(decode(document["state"]["arrays"], load_arrays(data), where=str(path)))
    if any(not np.array_equal(models[-1][k], v) for k, v in final.arrays.items()):
        raise ValueError(f"{tap_dir}: the last tapped model differs from the run's checkpoint")
    return models


# ---------------------------------------------------------------------------------------------- averages


def mean_model(models: list[Model]) -> Model:
    """Element-wise mean of floating arrays (in float64, cast back); other arrays from the last model."""
    out = {}
    for key, last in models[-1].items():
        if np.issubdtype(last.dtype, np.floating):
            out[key] = np.mean([m[key].astype(np.float64) for m in models], axis=0).astype(last.dtype)
        else:
            out[key] = last
    return out


def ema_model(models: list[Model], beta: float) -> Model:
    """`ema_r = β ema_(r-1) + (1 - β) w_r` over the rounds, starting at the first round's model."""
    ema = {k: v.astype(np.float64) for k, v in models[0].items()}
    for model in models[1:]:
        for key, value in model.items():
            if np.issubdtype(value.dtype, np.floating):
                ema[key] = beta * ema[key] + (1 - beta) * value
            else:
                ema[key] = value
    return {k: v.astype(models[-1][k].dtype) for k, v in ema.items()}


def variants(models: list[Model]) -> dict[str, Model]:
    """Every variant of `VARIANTS` (a mean over more rounds than the run has uses all of them)."""
    out = {"last": models[-1]}
    out |= {f"mean-{k}": mean_model(models[-k:]) for k in MEAN_KS}
    out |= {f"ema-{b:g}": ema_model(models, b) for b in EMA_BETAS}
    return out


# -------------------------------------------------------------------------------------------- evaluation


def evaluate_variants(run_dir: Path, tap_dir: Path) -> dict[str, Any]:
    """Pooled metrics of each variant on the run's sites' held-out splits, as the federated summary pools
    the sites' evaluations; ValueError when `last` does not reproduce the run's summary."""
    run = RunDirectory.existing(run_dir)
    config = RunConfig.from_flower(run.run_config())
    shared = {**run.config()["preprocessing"], "server-round": config.num_server_rounds}
    task = get_task(config.task)
    hook = site_hook(config.strategy)
    sites = load_sites(config, Path(config.data_root), config.min_sites)
    tests = [task.datasets(site, shared)[1] for site in sites]
    out: dict[str, Any] = {}
    for name, arrays in variants(round_models(run.path, tap_dir)).items():
        state = {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
        per_site = []
        for test in tests:
            model = task.build_model(config)
            model.load_state_dict(hook.model_state(state, shared, RecordDict()))
            with torch.no_grad():
                per_site.append(task.evaluate(model, test, torch.device("cpu")))
        out[name] = {m: float(v) for m, v in task.pool(per_site).items() if m in (*METRICS, "num-examples")}
    reported = run.read_json(SUMMARY_FILE)["overall"]
    for metric in METRICS:
        if not math.isclose(out["last"][metric], reported[metric], rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(f"{run_dir}: last {metric} {out['last'][metric]} != summary {reported[metric]}")
    return out


# ---------------------------------------------------------------------------------------------- the runs


def mni_part(args: argparse.Namespace, work: Path, record: Any, epsilons: list[float]) -> None:
    """MNI phantoms, 4 unequal sites, DP at each ε (outer loop), through tumour_utility's sites, config
    and arm; a seed's sites are generated once."""
    tu = _tumour_utility()
    options = argparse.Namespace(
        site_sizes=args.site_sizes, anatomy="mni", size=32, depth=16, contrasts="t1ce,flair", format="nifti",
        skew=2.0, model="features", rounds=args.rounds, local_epochs=args.local_epochs,
        batch_size=args.batch_size, lr=args.lr,
    )  # fmt: skip
    for eps in epsilons:
        for seed in args.seeds:
            seed_dir = work / f"mni-s{seed}"
            if not (seed_dir / "sites").is_dir():
                tu.make_sites(options, seed_dir / "sites", seed)
            base = tu.base_config("tumour", options, seed_dir / "sites", seed_dir, seed)
            arm = f"dp-eps{eps:g}"
            config = base.model_copy(
                update={"run_name": f"tumour-{arm}-s{seed}{args.tag}", "dp": True, "dp_target_epsilon": eps}
            )
            run_dir = Path(config.runs_dir) / config.run_name
            shutil.rmtree(run_dir, ignore_errors=True)
            with CheckpointTap(run_dir, seed_dir / "taps" / config.run_name) as tap:
                result = tu.federated_arm(config, len(args.site_sizes), seed_dir)
            record(f"mni {arm}", seed, run_dir, tap.tap_dir, result)


def twin_part(args: argparse.Namespace, work: Path, record: Any) -> None:
    """`fedward sim tumour --patients 120` with DP (its default ε) and with `--no-dp`."""
    fedward = Path(sys.executable).parent / "fedward"
    for seed in args.seeds:
        for arm, extra in (("dp", []), ("no-dp", ["--no-dp"])):
            if arm not in args.twin_arms:
                continue
            name = f"twin-{arm}-s{seed}{args.tag}"
            runs = work / "twin"
            shutil.rmtree(runs / name, ignore_errors=True)
            command = [str(fedward), "sim", "tumour", "--patients", "120", "--seed", str(seed),
                       "--name", name, "--runs-dir", str(runs), *extra]  # fmt: skip
            t0 = time.perf_counter()
            with CheckpointTap(runs / name, runs / "taps" / name) as tap:
                done = subprocess.run(command, capture_output=True, text=True)
            result: dict[str, Any] = {"command": " ".join(command[1:]), "seconds": time.perf_counter() - t0}
            if done.returncode:
                result["error"] = (done.stdout + done.stderr)[-300:]
            record(f"twin {arm}", seed, runs / name, tap.tap_dir, result)


# -------------------------------------------------------------------------------------------- the output


def mean_sd(values: list[float]) -> dict[str, float]:
    """Mean, sample sd (0 for one value) and count."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "n": len(values)} if values else {"n": 0}


def summarise(per_run: dict[str, dict[str, Any]], pooled: dict[str, float]) -> dict[str, Any]:
    """Per arm and variant: mean ± sd over seeds of each metric; % of pooled (MNI) or of the no-DP twin's
    same variant (twin, per seed then averaged as the ratio of means)."""
    out: dict[str, Any] = {}
    for arm, seeds in per_run.items():
        done = {s: r for s, r in seeds.items() if "variants" in r}
        out[arm] = {
            v: {m: mean_sd([r["variants"][v][m] for r in done.values()]) for m in METRICS} for v in VARIANTS
        }
    for arm, rows in out.items():
        for variant, row in rows.items():
            auc = row["roc-auc"].get("mean")
            if arm.startswith("mni") and pooled:
                row["%-of-pooled"] = 100 * auc / pooled["roc-auc"] if auc else None
            twin = out.get("twin no-dp", {}).get(variant, {}).get("roc-auc", {}).get("mean")
            if arm == "twin dp" and twin:
                row["%-of-no-dp"] = 100 * auc / twin
    return out


def markdown(results: dict[str, Any]) -> str:
    """Per-seed and summary tables."""
    lines = ["| arm | seed | " + " | ".join(VARIANTS) + " |", "|---|---|" + "---|" * len(VARIANTS)]
    for arm, seeds in results["per-run"].items():
        for seed, r in sorted(seeds.items()):
            if "variants" not in r:
                lines.append(f"| {arm} | {seed} | {r.get('error', 'failed')} |")
                continue
            cells = [f"{r['variants'][v]['roc-auc']:.3f} / {r['variants'][v]['balanced-accuracy']:.3f}"
                     for v in VARIANTS]  # fmt: skip
            lines.append(f"| {arm} | {seed} | " + " | ".join(cells) + " |")
    lines += ["", "macro AUC / balanced accuracy per run; mean ± sd over seeds below", ""]
    lines += ["| arm | variant | macro AUC | balanced accuracy | % |", "|---|---|---|---|---|"]
    for arm, rows in results["summary"].items():
        for variant, row in rows.items():
            if not row["roc-auc"]["n"]:
                continue
            auc, bacc = row["roc-auc"], row["balanced-accuracy"]
            share = row.get("%-of-pooled") or row.get("%-of-no-dp")
            pct = f"{share:.1f}" if share else "–"
            lines.append(f"| {arm} | {variant} | {auc['mean']:.3f} ± {auc['sd']:.3f} "
                         f"| {bacc['mean']:.3f} ± {bacc['sd']:.3f} | {pct} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _pooled(path: Path | None) -> dict[str, float]:
    """Mean over seeds of the pooled arm of a tumour_utility result file."""
    if path is None:
        return {}
    arm = json.loads(path.read_text())["summary"]["tumour"]["pooled"]
    return {m: arm[m]["mean"] for m in METRICS}


def main() -> None:
    """Run the parts, tap and evaluate every run, write JSON and Markdown after each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    parser.add_argument("--parts", type=lambda s: s.split(","), default=["mni", "twin"])
    parser.add_argument("--seeds", type=ints, default=[0, 1, 2])
    parser.add_argument("--epsilons", type=lambda s: [float(x) for x in s.split(",")], default=[1.0, 3.0])
    parser.add_argument("--tag", default="", help="suffix of the run names (a repeat beside earlier runs)")
    parser.add_argument("--twin-arms", type=lambda s: s.split(","), default=["dp", "no-dp"])
    parser.add_argument("--site-sizes", type=ints, default=[40, 120, 250, 400])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--pooled-from", type=Path,
                        default=HERE / "results" / "tumour_utility_features_mni_v2.json")  # fmt: skip
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedward-tail-average"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "tail_average.json")
    parser.add_argument("--evaluate", nargs=2, type=Path, metavar=("RUN_DIR", "TAP_DIR"))
    args = parser.parse_args()
    os.environ.setdefault("FEDWARD_DEVICE", "cpu")
    if args.evaluate:
        print(json.dumps(evaluate_variants(*args.evaluate), indent=2))
        return
    settings = {k: str(v) for k, v in vars(args).items()}
    results: dict[str, Any] = {
        "benchmark": "tail_average", "settings": settings, "pooled": _pooled(args.pooled_from), "per-run": {}
    }  # fmt: skip
    started = time.perf_counter()

    def record(arm: str, seed: int, run_dir: Path, tap_dir: Path, result: dict[str, Any]) -> None:
        row = {k: v for k, v in result.items() if k not in ("overall",)}
        if "error" not in result:
            try:
                row["variants"] = evaluate_variants(run_dir, tap_dir)
            except (ValueError, KeyError) as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
        results["per-run"].setdefault(arm, {})[str(seed)] = row
        results["summary"] = summarise(results["per-run"], results["pooled"])
        results["wall-seconds"] = time.perf_counter() - started
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        args.out.with_suffix(".md").write_text(markdown(results))
        shown = {v: round(m["roc-auc"], 3) for v, m in row.get("variants", {}).items()}
        print(f"{arm} seed {seed}: {shown or row.get('error')} {result['seconds']:.0f} s", flush=True)

    for part in args.parts:  # "mni" (every --epsilons), "mni:E" (ε = E only), "twin"
        if part == "twin":
            twin_part(args, args.work, record)
        else:
            name, _, eps = part.partition(":")
            assert name == "mni", f"unknown part {part!r}"
            mni_part(args, args.work, record, [float(eps)] if eps else args.epsilons)
    print(markdown(results))


if __name__ == "__main__":
    main()
