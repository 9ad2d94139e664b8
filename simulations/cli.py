"""`fedward sim`: simulate several hospitals on this machine."""

from __future__ import annotations

import json
import math
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from common.config import RunConfig
from simulations.prepare import prepare_ckd_sites
from simulations.report import print_comparison, sweep_table
from simulations.runner import run_simulation
from simulations.scenario import SWEEP_KEYS, Scenario, find_scenario, load_scenario, shipped_scenarios
from simulations.study import federated_results, read_results, run_study
from simulations.sweep import parse_over, run_sweep
from strategies.registry import STRATEGIES

app = typer.Typer(help="Simulate several hospitals on one machine.", no_args_is_help=True)
console = Console()


class Partition(StrEnum):
    """How the shipped data set is split into sites."""

    iid = "iid"
    dirichlet = "dirichlet"


@app.command("ckd")
def ckd(
    sites: Annotated[int, typer.Option(min=1, help="Number of simulated hospitals.")] = 3,
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 10,
    partition: Annotated[
        Partition, typer.Option(help="iid, or label skew by Dirichlet(alpha).")
    ] = Partition.iid,
    alpha: Annotated[
        float, typer.Option(min=1e-6, help="Dirichlet concentration (smaller = more skew).")
    ] = 0.5,
    epsilon: Annotated[float, typer.Option(min=0.01, help="Target ε per site over the whole run.")] = 3.0,
    no_dp: Annotated[
        bool, typer.Option("--no-dp", help="Train without differential privacy (baseline).")
    ] = False,
    model: Annotated[str, typer.Option(help="mlp or logreg.")] = RunConfig().model,
    strategy: Annotated[str, typer.Option(help=f"Aggregation: {', '.join(STRATEGIES)}.")] = "fedavg",
    seed: Annotated[int, typer.Option(help="Seed of partitions, splits, initial model and training.")] = 0,
    name: Annotated[str, typer.Option(help="Run name (default: ckd-<time>).")] = "",
    runs_dir: Annotated[Path, typer.Option(help="Where run directories go.")] = Path("runs"),
    verbose: Annotated[bool, typer.Option(help="Print Flower's whole log.")] = False,
) -> None:
    """Federated CKD on the shipped UCI data: partitions, DP-SGD at each site, FedAvg."""
    run_name = name or f"ckd-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = (runs_dir / run_name).resolve()
    data_root = run_dir / "sites"
    prepare_ckd_sites(
        data_root, sites, partition.value, alpha=alpha, test_fraction=RunConfig().test_fraction, seed=seed
    )
    config = RunConfig(
        task="ckd",
        num_server_rounds=rounds,
        min_sites=sites,
        seed=seed,
        model=model,
        strategy=strategy,
        dp=not no_dp,
        dp_target_epsilon=epsilon,
        data_root=str(data_root),
        partition=partition.value,
        dirichlet_alpha=alpha,
        runs_dir=str(run_dir.parent),
        run_name=run_name,
    )
    dp_text = "no DP" if no_dp else f"DP-SGD, ε ≤ {epsilon:g} per site"
    console.print(
        f"fedward sim ckd: {sites} sites ({partition.value}), {rounds} rounds, {strategy}, {dp_text}"
    )
    run_simulation(config.to_flower(), sites, log_file=run_dir / "flower.log", verbose=verbose)
    print_summary(run_dir)


class PhantomFormat(StrEnum):
    """How the synthetic MRI sites are written."""

    dicom = "dicom"
    nifti = "nifti"
    png = "png"


@app.command("tumour")
def tumour(
    sites: Annotated[int, typer.Option(min=1, help="Number of simulated hospitals.")] = 3,
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 5,
    patients: Annotated[int, typer.Option(min=4, help="Synthetic patients per site.")] = 24,
    fmt: Annotated[
        PhantomFormat, typer.Option("--format", help="dicom series, BraTS nifti, or png class folders.")
    ] = PhantomFormat.dicom,
    segmentation: Annotated[
        bool, typer.Option("--segmentation", help="Task tumour-seg (UNet, Dice) instead of classification.")
    ] = False,
    binary: Annotated[
        bool, typer.Option("--binary", help="Tumour / no tumour instead of 4 classes.")
    ] = False,
    contrasts: Annotated[
        str, typer.Option(help="Contrasts written and used, in channel order.")
    ] = "t1ce,flair",
    size: Annotated[int, typer.Option(min=8, help="Slice size of the phantoms and the model input.")] = 32,
    slices: Annotated[int, typer.Option(min=1, help="Slices per phantom volume.")] = 12,
    skew: Annotated[
        float, typer.Option(min=1e-3, help="Dirichlet concentration of each site's class mix.")
    ] = 2.0,
    epsilon: Annotated[float, typer.Option(min=0.01, help="Target ε per site over the whole run.")] = 3.0,
    no_dp: Annotated[
        bool, typer.Option("--no-dp", help="Train without differential privacy (baseline).")
    ] = False,
    model: Annotated[
        str, typer.Option(help="cnn or densenet121 (classification); unet (segmentation).")
    ] = "",
    local_epochs: Annotated[int, typer.Option(min=1, help="Local epochs per round.")] = 40,
    batch_size: Annotated[int, typer.Option(min=1, help="Local batch size.")] = 4,
    lr: Annotated[float, typer.Option(min=1e-9, help="Local learning rate (Adam).")] = 0.002,
    strategy: Annotated[str, typer.Option(help=f"Aggregation: {', '.join(STRATEGIES)}.")] = "fedavg",
    seed: Annotated[int, typer.Option(help="Seed of the phantoms, splits, initial model and training.")] = 0,
    name: Annotated[str, typer.Option(help="Run name (default: tumour-<time>).")] = "",
    runs_dir: Annotated[Path, typer.Option(help="Where run directories go.")] = Path("runs"),
    verbose: Annotated[bool, typer.Option(help="Print Flower's whole log.")] = False,
) -> None:
    """Federated brain-tumour MRI on synthetic multi-site phantoms: DP training at each site, FedAvg."""
    task = "tumour-seg" if segmentation else "tumour"
    run_name = name or f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = (runs_dir / run_name).resolve()
    data_root = run_dir / "sites"
    config = RunConfig(
        task=task,
        num_server_rounds=rounds,
        min_sites=sites,
        seed=seed,
        model=model or ("unet" if segmentation else "cnn"),
        local_epochs=local_epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer="adam",
        strategy=strategy,
        dp=not no_dp,
        dp_target_epsilon=epsilon,
        data_root=str(data_root),
        runs_dir=str(run_dir.parent),
        run_name=run_name,
        image_size=size,
        image_depth=0 if fmt is PhantomFormat.png else RunConfig().image_depth,
        mri_contrasts=contrasts,
        tumour_binary=binary,
    )
    from common.tasks.mri import contrasts_of  # imaging stack: imported only for this command
    from simulations.phantoms import PhantomSpec, generate_sites

    spec = PhantomSpec(size=size, slices=slices, contrasts=contrasts_of(config))
    generate_sites(data_root, sites, patients, fmt=fmt.value, spec=spec, skew=skew, seed=seed)
    dp_text = "no DP" if no_dp else f"DP-Adam, ε ≤ {epsilon:g} per site"
    console.print(
        f"fedward sim {task}: {sites} sites × {patients} phantom patients ({fmt.value}), "
        f"{rounds} rounds, {dp_text}"
    )
    run_simulation(config.to_flower(), sites, log_file=run_dir / "flower.log", verbose=verbose)
    print_summary(run_dir, SEGMENTATION_COLUMNS if segmentation else CLASSIFICATION_COLUMNS)


ScenarioArg = Annotated[
    str, typer.Argument(help="A scenario TOML file, or the name of a shipped one (fedward sim scenarios).")
]


@app.command("run")
def run(
    scenario: ScenarioArg,
    baselines: Annotated[
        bool, typer.Option(help="Also train pooled and local-only baselines and compare (baselines.json).")
    ] = True,
    name: Annotated[str, typer.Option(help="Run name (default: <scenario>-<time>).")] = "",
    runs_dir: Annotated[Path, typer.Option(help="Where run directories go.")] = Path("runs"),
    verbose: Annotated[bool, typer.Option(help="Print Flower's whole log.")] = False,
) -> None:
    """Run a scenario file: its sites, the federation, then pooled and local-only baselines."""
    spec = load_scenario(find_scenario(scenario))
    run_dir = (runs_dir / (name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}")).resolve()
    console.print(f"fedward sim run {spec.name}: {_describe(spec)}")
    payload = run_study(spec, run_dir, baselines=baselines, verbose=verbose)
    columns = SEGMENTATION_COLUMNS if spec.scenario.task == "tumour-seg" else CLASSIFICATION_COLUMNS
    print_summary(run_dir, columns)
    if baselines:
        print_comparison(console, payload)
        console.print(f"comparison written to {run_dir / 'baselines.json'}")


@app.command("sweep")
def sweep(
    scenario: ScenarioArg,
    over: Annotated[
        str, typer.Option(help=f"KEY=V1,V2,... with KEY one of {', '.join(SWEEP_KEYS)} (epsilon inf: no DP).")
    ],
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per value: the scenario's seed, +1, ...")] = 1,
    baselines: Annotated[bool, typer.Option(help="Also run pooled and local-only baselines per run.")] = True,
    name: Annotated[str, typer.Option(help="Sweep folder name (default: <scenario>-sweep-<key>).")] = "",
    runs_dir: Annotated[Path, typer.Option(help="Where the sweep folder goes.")] = Path("runs"),
    verbose: Annotated[bool, typer.Option(help="Print Flower's whole log.")] = False,
) -> None:
    """Run a scenario over a grid of one key's values × seeds; write sweep.json and sweep.png."""
    spec = load_scenario(find_scenario(scenario))
    key, values = parse_over(over)
    sweep_dir = (runs_dir / (name or f"{spec.name}-sweep-{key}")).resolve()
    console.print(f"fedward sim sweep {spec.name}: {key} in {', '.join(values)} × {seeds} seed(s)")

    def run_one(variant: Scenario, run_dir: Path) -> dict:
        done = _finished(run_dir, variant, baselines)
        if done is not None:
            console.print(f"reusing {run_dir.name}")
            return done
        console.print(f"[bold]{run_dir.name}[/bold]: {_describe(variant)}")
        return run_study(variant, run_dir, baselines=baselines, verbose=verbose)

    result = run_sweep(spec, key, values, seeds, sweep_dir, run_one)
    console.print(sweep_table(result))
    for failed in (r for r in result["runs"] if "error" in r):
        console.print(f"[red]{failed['run']} failed:[/red] {failed['error']}")
    console.print(f"sweep written to {sweep_dir / 'sweep.json'} and {sweep_dir / 'sweep.png'}")


@app.command("scenarios")
def scenarios() -> None:
    """List the scenarios that ship with fedward."""
    table = Table(title="shipped scenarios (fedward sim run NAME)")
    table.add_column("name")
    table.add_column("description")
    for path in shipped_scenarios():
        spec = load_scenario(path)
        table.add_row(path.stem, spec.scenario.description)
    console.print(table)


def _describe(spec: Scenario) -> str:
    """One line: task, sites, partition, rounds, strategy, DP."""
    p, priv = spec.partition, spec.privacy
    dp = f"DP ε ≤ {priv.epsilon:g} per site" if priv.private else "no DP"
    if priv.private and priv.noise_multiplier > 0:
        dp = f"DP σ = {priv.noise_multiplier:g}"
    sites = spec.num_sites if spec.num_sites is not None else f"'{p.column}'"
    rounds = spec.scenario.rounds
    return f"{spec.scenario.task}, {sites} sites ({p.kind}), {rounds} rounds, {spec.strategy.name}, {dp}"


def _finished(run_dir: Path, spec: Scenario, baselines: bool) -> dict | None:
    """The results of a run folder finished by an earlier sweep (None when it has none)."""
    if baselines:
        return read_results(run_dir)
    summary, config = run_dir / "summary.json", run_dir / "config.json"
    if not (summary.is_file() and config.is_file()):
        return None
    run_config = RunConfig.from_flower(json.loads(config.read_text())["run-config"])
    federated = federated_results(json.loads(summary.read_text()), run_config)
    return {"scenario": spec.name, "task": run_config.task, "metric": spec.metric, "federated": federated}


CLASSIFICATION_COLUMNS = ("accuracy", "roc-auc", "sensitivity", "specificity", "f1")
SEGMENTATION_COLUMNS = ("dice", "dice-voxels", "hd95")


def print_summary(run_dir: Path, columns: tuple[str, ...] = CLASSIFICATION_COLUMNS) -> None:
    """Final table: overall and per-site metrics with ε."""
    summary_file = run_dir / "summary.json"
    if not summary_file.is_file():
        raise typer.Exit(_fail(f"the run ended without {summary_file}; see {run_dir / 'flower.log'}"))
    summary = json.loads(summary_file.read_text())
    table = Table(title=f"{summary['task']} · {summary['strategy']} · {summary['rounds-completed']} rounds")
    for col in ("site", "n test", *columns, "ε"):
        table.add_column(col, justify="right" if col != "site" else "left")

    def cell(value) -> str:
        return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

    for site, info in summary["sites"].items():
        ev = info.get("evaluate") or {}
        eps = info.get("epsilon")
        table.add_row(
            site, f"{int(ev.get('num-examples', 0))}",
            *(cell(ev.get(k)) for k in columns),
            "∞" if not summary["dp"] else cell(eps),
        )  # fmt: skip
    ov = summary["overall"]
    table.add_row(
        "[bold]overall", f"{int(ov.get('num-examples', 0))}",
        *(cell(ov.get(k)) for k in columns), "",
    )  # fmt: skip
    console.print(table)
    console.print(f"wall time {summary['wall-seconds']:.1f} s · run directory {run_dir}")


def _fail(message: str) -> int:
    console.print(f"[red]error:[/red] {message}")
    return 1
