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
from simulations.runner import run_simulation
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
