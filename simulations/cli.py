"""`fedward sim`: simulate several hospitals on this machine."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fedward.common.config import RunConfig
from fedward.common.data.partition import RESAMPLE_ROWS_PER_SITE
from fedward.common.errors import ConfigError
from fedward.common.tasks import task_spec
from fedward.server.rundir import CONFIG_FILE, CROSS_SITE_FILE, SUMMARY_FILE, RunDirectory
from fedward.simulations.progress import RunProgress
from fedward.simulations.recipes import (
    FEATURES_RECIPE,
    IMAGE_MODEL,
    VOXEL_FEATURES_RECIPE,
    Recipe,
    planned_training,
)
from fedward.simulations.runner import SimulationResources, SitePreparation, run_simulation

if TYPE_CHECKING:  # the commands import their machinery when they run: `--help` stays instant
    from fedward.simulations.scenario import Scenario

STRATEGY_NAMES = (
    "fedavg, fedprox, fedadam, fedyogi, fedadagrad, fedavgm, fedmedian, fedtrimmedavg, krum, multikrum, "
    "bulyan, scaffold, fedbn"
)  # as in strategies/registry.py (a test keeps them equal); the registry imports Flower
SWEEP_KEYS = ("epsilon", "strategy", "alpha", "sites", "rounds")  # as simulations/scenario.py sweeps
AUDIT_HELP = (
    "Audit the run: site 0 trains with gradient canaries; ε lower bounds of the coordinator and of the final "
    "model's recipients, and membership inference, go beside the claimed ε (summary.json, report)."
)
AUDIT_CANARIES = 1000  # gradient canaries of an audit (capped at one per trainable weight)


app = typer.Typer(help="Simulate several hospitals on one machine.", no_args_is_help=True)
console = Console()


@dataclass(frozen=True)
class Launch:
    """How every simulation of this command runs: Ray resources and run-config overrides."""

    resources: SimulationResources = field(default_factory=SimulationResources)
    overrides: dict[str, Any] = field(default_factory=dict)

    def run(
        self,
        run_config: dict[str, Any],
        sites: int,
        run_dir: Path,
        verbose: bool,
        prepare: SitePreparation | None = None,
    ) -> None:
        """One simulated federation with a progress bar (plain lines when not in a terminal); `prepare`
        writes the sites' data while the simulation starts."""
        run_dir.mkdir(parents=True, exist_ok=True)
        with RunProgress(console, run_dir.name) as progress:
            run_simulation(
                run_config, sites, resources=self.resources, overrides=self.overrides,
                log_file=run_dir / "flower.log", verbose=verbose, echo=progress.feed, prepare=prepare,
            )  # fmt: skip


@app.callback()
def settings(
    ctx: typer.Context,
    cpus_per_site: Annotated[
        int, typer.Option(min=1, help="Ray CPUs per simulated site (sets concurrency).")
    ] = 1,
    gpus_per_site: Annotated[
        float | None,
        typer.Option(min=0, help="Ray GPUs per site (default: 0.2 when CUDA is present, else 0)."),
    ] = None,
    total_cpus: Annotated[int | None, typer.Option(min=1, help="CPUs Ray may use (default: all).")] = None,
    total_gpus: Annotated[int | None, typer.Option(min=0, help="GPUs Ray may use (default: all).")] = None,
    ray_address: Annotated[
        str | None, typer.Option(envvar="RAY_ADDRESS", help="Join this existing Ray cluster (host:port).")
    ] = None,
    run_config: Annotated[
        list[str] | None,
        typer.Option("--run-config", "-c", help="Run-config override k=v for every run (repeatable)."),
    ] = None,
) -> None:
    """Resources and run-config overrides shared by the simulation commands."""
    from flwr.common.config import parse_config_args

    try:
        overrides = dict(parse_config_args(run_config or None))
    except Exception as exc:  # flwr raises click's ClickException or ValueError
        raise ConfigError(f"--run-config: {getattr(exc, 'message', None) or exc}") from exc
    RunConfig.from_flower(overrides)
    resources = SimulationResources(cpus_per_site, gpus_per_site, total_cpus, total_gpus, ray_address)
    resources.federation_config()  # conflicting settings fail here
    ctx.obj = Launch(resources, overrides)


def _launch(ctx: typer.Context) -> Launch:
    return ctx.obj if isinstance(ctx.obj, Launch) else Launch()


class Partition(StrEnum):
    """How the shipped data set is split into sites."""

    iid = "iid"
    dirichlet = "dirichlet"
    resample = "resample"  # synthetic, for scale tests: rows repeat across sites


@app.command("ckd")
def ckd(
    ctx: typer.Context,
    sites: Annotated[int, typer.Option(min=1, help="Number of simulated hospitals.")] = 3,
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 10,
    partition: Annotated[
        Partition,
        typer.Option(
            help="iid, label skew by Dirichlet(alpha), or resample: SYNTHETIC sites of --rows-per-site rows "
            "drawn from the whole table (rows repeat across sites; for scale tests, not utility figures)."
        ),
    ] = Partition.iid,
    alpha: Annotated[
        float, typer.Option(min=1e-6, help="Dirichlet concentration (smaller = more skew).")
    ] = 0.5,
    rows_per_site: Annotated[
        int, typer.Option(min=4, help="Rows per site with --partition resample (stratified).")
    ] = RESAMPLE_ROWS_PER_SITE,
    fraction_train: Annotated[
        float,
        typer.Option(min=1e-6, max=1.0, help="Share of sites sampled to train each round."),
    ] = 1.0,
    fraction_evaluate: Annotated[
        float,
        typer.Option(min=1e-6, max=1.0, help="Share of sites sampled to evaluate each round."),
    ] = 1.0,
    epsilon: Annotated[float, typer.Option(min=0.01, help="Target ε per site over the whole run.")] = 3.0,
    no_dp: Annotated[
        bool, typer.Option("--no-dp", help="Train without differential privacy (baseline).")
    ] = False,
    model: Annotated[str, typer.Option(help="mlp or logreg.")] = RunConfig().model,
    strategy: Annotated[str, typer.Option(help=f"Aggregation: {STRATEGY_NAMES}.")] = "fedavg",
    seed: Annotated[int, typer.Option(help="Seed of partitions, splits, initial model and training.")] = 0,
    name: Annotated[str, typer.Option(help="Run name (default: ckd-<time>).")] = "",
    runs_dir: Annotated[Path, typer.Option(help="Where run directories go.")] = Path("runs"),
    verbose: Annotated[bool, typer.Option(help="Print Flower's whole log.")] = False,
) -> None:
    """Federated CKD on the shipped UCI data: partitions, DP-SGD at each site, FedAvg."""
    run_name = name or f"ckd-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = (runs_dir / run_name).resolve()
    config, prepare = _ckd_setup(
        run_dir, sites, rounds, seed,
        partition=partition.value, alpha=alpha, rows_per_site=rows_per_site, fraction_train=fraction_train,
        fraction_evaluate=fraction_evaluate, model=model, strategy=strategy, dp=not no_dp, epsilon=epsilon,
    )  # fmt: skip
    dp_text = "no DP" if no_dp else f"DP-SGD, ε ≤ {epsilon:g} per site"
    sampled = "" if fraction_train == 1 else f", {fraction_train:g} of them sampled per round"
    console.print(
        f"fedward sim ckd: {sites} sites ({partition.value}){sampled}, {rounds} rounds, {strategy}, {dp_text}"
    )
    _launch(ctx).run(config.to_flower(), sites, run_dir, verbose, prepare)
    print_summary(run_dir)


def _ckd_setup(
    run_dir: Path, sites: int, rounds: int, seed: int, *, partition: str = "iid", alpha: float = 0.5,
    rows_per_site: int = RESAMPLE_ROWS_PER_SITE, **settings: Any,
) -> tuple[RunConfig, SitePreparation]:  # fmt: skip
    """The run config and the sites' data preparation of a CKD simulation in `run_dir`; `settings`:
    fraction_train/_evaluate, model, strategy, dp, epsilon (as `dp_target_epsilon`) and further keys."""
    data_root = run_dir / "sites"
    prepare = SitePreparation(
        "fedward.simulations.prepare:prepare_ckd_sites",
        {
            "out_dir": str(data_root), "num_sites": sites, "partition": partition, "alpha": alpha,
            "test_fraction": RunConfig().test_fraction, "seed": seed, "rows_per_site": rows_per_site,
        },
    )  # fmt: skip
    if "epsilon" in settings:
        settings["dp_target_epsilon"] = settings.pop("epsilon")
    config = RunConfig(
        task="ckd", num_server_rounds=rounds, min_sites=sites, seed=seed, data_root=str(data_root),
        partition=partition, dirichlet_alpha=alpha, runs_dir=str(run_dir.parent), run_name=run_dir.name,
        **settings,
    )  # fmt: skip
    return config, prepare


class PhantomFormat(StrEnum):
    """How the synthetic MRI sites are written."""

    dicom = "dicom"
    nifti = "nifti"
    png = "png"


class PhantomAnatomy(StrEnum):
    """What the synthetic heads are made of."""

    simple = "simple"
    mni = "mni"


def site_sizes(text: str, sites: int, smallest: int = 4) -> list[int]:
    """`--patients`: one number for every site, or a comma list with one number per site."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise typer.BadParameter(
            f"expected a number or a comma list such as 40,120,250,400; got {text!r}", param_hint="--patients"
        ) from None
    if len(counts) == 1:
        counts *= sites
    if len(counts) != sites:
        raise typer.BadParameter(
            f"{len(counts)} site sizes given for --sites {sites}; give one number, or one per site",
            param_hint="--patients",
        )
    if min(counts) < smallest:
        raise typer.BadParameter(
            f"each site needs at least {smallest} patients, got {text}", param_hint="--patients"
        )
    return counts


def _by_model(key: str) -> str:
    """`(default: features 1, voxel-features 4, other models 40)`: a recipe value for --help
    (simulations/recipes.py)."""
    features, voxel, others = (getattr(r, key) for r in (FEATURES_RECIPE, VOXEL_FEATURES_RECIPE, IMAGE_MODEL))
    return f"(default: features {features:g}, voxel-features {voxel:g}, other models {others:g})"


@app.command("tumour")
def tumour(
    ctx: typer.Context,
    sites: Annotated[int, typer.Option(min=1, help="Number of simulated hospitals.")] = 3,
    rounds: Annotated[
        int | None, typer.Option(min=1, help=f"Federated rounds {_by_model('rounds')}.", show_default=False)
    ] = None,
    patients: Annotated[
        str,
        typer.Option(
            help="Synthetic patients per site: one number, or one per site (40,120,250,400). Under DP a "
            "site needs dozens: at 24 the private default model stays near the majority class."
        ),
    ] = "60",
    anatomy: Annotated[
        PhantomAnatomy, typer.Option(help="simple (ellipsoid heads) or mni (MNI template anatomy).")
    ] = PhantomAnatomy.simple,
    fmt: Annotated[
        PhantomFormat, typer.Option("--format", help="dicom series, BraTS nifti, or png class folders.")
    ] = PhantomFormat.dicom,
    segmentation: Annotated[
        bool, typer.Option("--segmentation", help="Task tumour-seg (UNet, Dice) instead of classification.")
    ] = False,
    pipeline: Annotated[
        Path | None,
        typer.Option(
            "--pipeline",
            metavar="SEG_RUN",
            help="Task tumour-pipeline: classify per-tumour features of the masks of this finished "
            "`--segmentation` run's model, on that run's phantom sites (their ledgers: ε adds up).",
        ),
    ] = None,
    binary: Annotated[
        bool, typer.Option("--binary", help="Tumour / no tumour instead of 4 classes.")
    ] = False,
    contrasts: Annotated[
        str, typer.Option(help="Contrasts written and used, in channel order.")
    ] = "t1ce,flair",
    size: Annotated[int, typer.Option(min=8, help="Slice size of the phantoms and the model input.")] = 32,
    slices: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Slices per phantom volume [default: the model's input depth, 16; 12 for --format png].",
            show_default=False,
        ),
    ] = None,
    skew: Annotated[
        float, typer.Option(min=1e-3, help="Dirichlet concentration of each site's class mix.")
    ] = 2.0,
    epsilon: Annotated[float, typer.Option(min=0.01, help="Target ε per site over the whole run.")] = 3.0,
    no_dp: Annotated[
        bool, typer.Option("--no-dp", help="Train without differential privacy (baseline).")
    ] = False,
    model: Annotated[
        str,
        typer.Option(
            help="Classification: features (default; fixed filter bank + linear head, learns under DP), cnn "
            "(the default for --format png: 2D), densenet121. Segmentation: voxel-features (default; fixed "
            "per-voxel features + a per-voxel MLP, learns under DP), unet (the default for --format png).",
            show_default=False,
        ),
    ] = "",
    local_epochs: Annotated[
        int | None,
        typer.Option(min=1, help=f"Local epochs per round {_by_model('local_epochs')}.", show_default=False),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help=f"Local batch size {_by_model('batch_size')}.", show_default=False),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(min=1e-9, help=f"Local learning rate, Adam {_by_model('lr')}.", show_default=False),
    ] = None,
    strategy: Annotated[str, typer.Option(help=f"Aggregation: {STRATEGY_NAMES}.")] = "fedavg",
    seed: Annotated[int, typer.Option(help="Seed of the phantoms, splits, initial model and training.")] = 0,
    name: Annotated[str, typer.Option(help="Run name (default: tumour-<time>).")] = "",
    runs_dir: Annotated[Path, typer.Option(help="Where run directories go.")] = Path("runs"),
    verbose: Annotated[bool, typer.Option(help="Print Flower's whole log.")] = False,
) -> None:
    """Federated brain-tumour MRI on synthetic multi-site phantoms: DP training at each site, FedAvg."""
    task = "tumour-pipeline" if pipeline else "tumour-seg" if segmentation else "tumour"
    counts = site_sizes(patients, sites)
    run_name = name or f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = (runs_dir / run_name).resolve()
    data_root = run_dir / "sites"
    if pipeline is not None:
        seg = _segmenter_run(pipeline.resolve(), segmentation)
        sites, data_root, contrasts = seg["min-sites"], Path(seg["data-root"]), seg["mri-contrasts"]
    depth = seg["image-depth"] if pipeline else 0 if fmt is PhantomFormat.png else RunConfig().image_depth
    model, plan = planned_training(
        task, depth, model, rounds=rounds, local_epochs=local_epochs, batch_size=batch_size, lr=lr
    )
    config = RunConfig(
        task=task,
        num_server_rounds=plan.rounds,
        min_sites=sites,
        seed=seed,
        model=model,
        local_epochs=plan.local_epochs,
        batch_size=plan.batch_size,
        lr=plan.lr,
        optimizer=plan.optimizer,
        strategy=strategy,
        dp=not no_dp,
        dp_target_epsilon=epsilon,
        data_root=str(data_root),
        runs_dir=str(run_dir.parent),
        run_name=run_name,
        image_size=seg["image-size"] if pipeline else size,
        image_depth=depth,
        mri_contrasts=contrasts,
        tumour_binary=binary,
        segmenter_run=str(pipeline.resolve()) if pipeline else "",
    )
    if pipeline is not None:  # the segmenter run's sites, as they are
        console.print(f"fedward sim {task}: the {sites} sites of {pipeline}, {_recipe_text(model, plan)}")
        _launch(ctx).run(config.to_flower(), sites, run_dir, verbose)
        print_summary(run_dir)
        _pipeline_privacy(pipeline.resolve(), run_dir)
        return
    from fedward.common.tasks.mri import contrasts_of  # imaging stack: imported only for this command
    from fedward.simulations.phantoms import PhantomSpec, generate_sites, phantom_slices

    slices = phantom_slices(depth, slices)
    spec = PhantomSpec(size=size, slices=slices, contrasts=contrasts_of(config), anatomy=anatomy.value)
    generate_sites(data_root, sites, counts, fmt=fmt.value, spec=spec, skew=skew, seed=seed)
    dp_text = "no DP" if no_dp else f"DP-Adam, ε ≤ {epsilon:g} per site"
    sizes = f"{sites} sites × {counts[0]}" if len(set(counts)) == 1 else f"sites of {patients}"
    console.print(
        f"fedward sim {task}: {sizes} phantom patients ({fmt.value}, {anatomy.value} anatomy), "
        f"{_recipe_text(model, plan)}, {dp_text}"
    )
    _launch(ctx).run(config.to_flower(), sites, run_dir, verbose)
    print_summary(run_dir)


def _recipe_text(model: str, plan: Recipe) -> str:
    """`model features, 10 rounds × 1 local epoch (batch 8, lr 0.05)`."""
    epochs = "epoch" if plan.local_epochs == 1 else "epochs"
    return (
        f"model {model}, {plan.rounds} rounds × {plan.local_epochs} local {epochs} "
        f"(batch {plan.batch_size}, lr {plan.lr:g})"
    )


def _segmenter_run(folder: Path, segmentation: bool) -> dict[str, Any]:
    """The run config of the finished tumour-seg run `--pipeline` names (exit 1 with a reason if not)."""
    if segmentation:
        raise typer.Exit(_fail("--pipeline trains the classifier: it does not go with --segmentation"))
    try:
        seg = RunDirectory.existing(folder).run_config()
    except ConfigError as exc:
        raise typer.Exit(_fail(f"--pipeline: {exc}")) from None
    if seg.get("task") != "tumour-seg" or not seg.get("data-root"):
        raise typer.Exit(_fail(f"--pipeline: {folder} is not a `fedward sim tumour --segmentation` run"))
    return seg


def _pipeline_privacy(seg_run: Path, run_dir: Path) -> None:
    """One line per site: each stage's ε and the two composed, as the site's ledger (which holds every
    step of both) reports it after the classifier run."""
    runs = [RunDirectory(r, create=False).read_optional_json(SUMMARY_FILE) or {} for r in (seg_run, run_dir)]
    if not all(r.get("dp") for r in runs):
        console.print("privacy: a stage trained without DP, so the pipeline has no finite ε")
        return
    for site in sorted(runs[1].get("sites", {})):
        seg, clf = ((r["sites"].get(site) or {}) for r in runs)
        both = float(clf.get("epsilon-lifetime") or math.nan)
        console.print(
            f"privacy {site}: ε segmenter {float(seg.get('epsilon') or math.nan):.2f}, classifier "
            f"{float(clf.get('epsilon') or math.nan):.2f}; both composed (the site's ledger) {both:.2f}"
        )


ScenarioArg = Annotated[
    str, typer.Argument(help="A scenario TOML file, or the name of a shipped one (fedward sim scenarios).")
]


@app.command("run")
def run(
    ctx: typer.Context,
    scenario: ScenarioArg,
    baselines: Annotated[
        bool, typer.Option(help="Also train pooled and local-only baselines and compare (baselines.json).")
    ] = True,
    audit: Annotated[bool, typer.Option(help=AUDIT_HELP)] = False,
    name: Annotated[str, typer.Option(help="Run name (default: <scenario>-<time>).")] = "",
    runs_dir: Annotated[Path, typer.Option(help="Where run directories go.")] = Path("runs"),
    verbose: Annotated[bool, typer.Option(help="Print Flower's whole log.")] = False,
) -> None:
    """Run a scenario file: its sites, the federation, then pooled and local-only baselines."""
    from fedward.simulations.report import print_comparison
    from fedward.simulations.scenario import find_scenario, load_scenario
    from fedward.simulations.study import run_study

    spec = load_scenario(find_scenario(scenario))
    run_dir = (runs_dir / (name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}")).resolve()
    console.print(f"fedward sim run {spec.name}: {_describe(spec)}")
    payload = run_study(
        spec, run_dir, baselines=baselines, verbose=verbose, launch=_launch(ctx).run, audit=_canaries(audit)
    )
    print_summary(run_dir)
    if audit:
        print_audit(payload["empirical-privacy"])
    if baselines:
        print_comparison(console, payload)
        console.print(f"comparison written to {run_dir / 'baselines.json'}")


@app.command("sweep")
def sweep(
    ctx: typer.Context,
    scenario: ScenarioArg,
    over: Annotated[
        str, typer.Option(help=f"KEY=V1,V2,... with KEY one of {', '.join(SWEEP_KEYS)} (epsilon inf: no DP).")
    ],
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per value: the scenario's seed, +1, ...")] = 1,
    baselines: Annotated[bool, typer.Option(help="Also run pooled and local-only baselines per run.")] = True,
    audit: Annotated[bool, typer.Option(help=AUDIT_HELP + " Plots lower bound vs claimed ε.")] = False,
    name: Annotated[str, typer.Option(help="Sweep folder name (default: <scenario>-sweep-<key>).")] = "",
    runs_dir: Annotated[Path, typer.Option(help="Where the sweep folder goes.")] = Path("runs"),
    verbose: Annotated[bool, typer.Option(help="Print Flower's whole log.")] = False,
) -> None:
    """Run a scenario over a grid of one key's values × seeds; write sweep.json and sweep.png."""
    from fedward.simulations.report import sweep_table
    from fedward.simulations.scenario import find_scenario, load_scenario
    from fedward.simulations.study import run_study
    from fedward.simulations.sweep import parse_over, run_sweep

    spec = load_scenario(find_scenario(scenario))
    key, values = parse_over(over)
    sweep_dir = (runs_dir / (name or f"{spec.name}-sweep-{key}")).resolve()
    console.print(f"fedward sim sweep {spec.name}: {key} in {', '.join(values)} × {seeds} seed(s)")

    def run_one(variant: Scenario, run_dir: Path) -> dict:
        done = _finished(run_dir, variant, baselines)
        if done is not None and (not audit or "empirical-privacy" in done):
            console.print(f"reusing {run_dir.name}")
            return done
        console.print(f"[bold]{run_dir.name}[/bold]: {_describe(variant)}")
        return run_study(
            variant,
            run_dir,
            baselines=baselines,
            verbose=verbose,
            launch=_launch(ctx).run,
            audit=_canaries(audit),
        )

    result = run_sweep(spec, key, values, seeds, sweep_dir, run_one)
    console.print(sweep_table(result))
    for failed in (r for r in result["runs"] if "error" in r):
        console.print(f"[red]{failed['run']} failed:[/red] {failed['error']}")
    console.print(f"sweep written to {sweep_dir / 'sweep.json'} and {sweep_dir / 'sweep.png'}")


RunDirArg = Annotated[Path, typer.Argument(help="The run directory (runs/<name>).")]


def _canaries(audit: bool) -> int:
    return AUDIT_CANARIES if audit else 0


@app.command("audit")
def audit(
    ctx: typer.Context,
    sites: Annotated[int, typer.Option(min=2, help="Number of simulated hospitals.")] = 3,
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 10,
    epsilon: Annotated[float, typer.Option(min=0.01, help="Target ε per site over the whole run.")] = 3.0,
    no_dp: Annotated[
        bool, typer.Option("--no-dp", help="Control: train without DP (the audit must see the leak).")
    ] = False,
    seeded_noise: Annotated[
        bool,
        typer.Option(
            "--seeded-noise",
            help="Control: DP noise replayable from the run seed (research switch); a coordinator who "
            "knows the seed removes it, and the audit must flag a leak.",
        ),
    ] = False,
    canaries: Annotated[
        int, typer.Option(min=2, help="Gradient canaries at the audited site (at most one per weight).")
    ] = AUDIT_CANARIES,
    seed: Annotated[int, typer.Option(help="Seed of partitions, splits and the initial model.")] = 0,
    name: Annotated[str, typer.Option(help="Run name (default: audit-ckd-<time>).")] = "",
    runs_dir: Annotated[Path, typer.Option(help="Where run directories go.")] = Path("runs"),
    verbose: Annotated[bool, typer.Option(help="Print Flower's whole log.")] = False,
) -> None:
    """Privacy audit of a federated CKD run: one site holds canaries; ε lower bounds beside the claimed ε."""
    from fedward.simulations.audit import analyse, prepare_canaries
    from fedward.simulations.study import AUDIT_FOLDER

    if no_dp and seeded_noise:
        raise ConfigError("--no-dp and --seeded-noise are two different controls: choose one")
    run_name = name or f"audit-ckd-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = (runs_dir / run_name).resolve()
    audit_dir = run_dir / AUDIT_FOLDER
    config, prepare = _ckd_setup(
        run_dir,
        sites,
        rounds,
        seed,
        dp=not no_dp,
        epsilon=epsilon,
        dp_seeded_noise=seeded_noise,
        audit_dir=str(audit_dir),
    )
    drawn = prepare_canaries(config, audit_dir, canaries)
    control = "no DP (control)" if no_dp else f"DP-SGD, ε ≤ {epsilon:g}"
    control += ", SEEDED noise (control)" if seeded_noise else ""
    console.print(
        f"fedward sim audit: {sites} CKD sites, {rounds} rounds, {control}; "
        f"{drawn.count} canaries at site-{config.audit_site}"
    )
    _launch(ctx).run(config.to_flower(), sites, run_dir, verbose, prepare)
    print_summary(run_dir)
    print_audit(analyse(run_dir, audit_dir, config, sites))


def print_audit(result: dict) -> None:
    """The audit's table: claimed ε beside each adversary's lower bound."""
    claimed = result["claimed"]["epsilon"]
    table = Table(
        title=f"Empirical privacy of {result['site']} ({result['canaries']} canaries, 95 % confidence)"
    )
    for column in ("adversary", "ε lower bound", "claimed ε", "correct / guesses"):
        table.add_column(column)
    for adversary, entry in result["adversaries"].items():
        table.add_row(
            adversary,
            f"{entry['epsilon-lower-bound']:.2f}",
            "∞ (no DP)" if claimed is None else f"{claimed:.2f}",
            f"{entry['correct']} / {entry['guesses']}",
        )
    console.print(table)
    mia = result["membership-inference"]
    tprs = ", ".join(
        f"TPR@{k} FPR {'n/a' if v is None else f'{v:.3f}'}" for k, v in mia["tpr-at-fpr"].items()
    )
    console.print(
        f"membership inference ({mia.get('attack', 'loss')} attack, final model): "
        f"AUC {mia['auc']:.3f}, {tprs} "
        f"({mia['members']} members, {mia['non-members']} non-members)"
    )
    if result["leak"]:
        console.print("[bold red]LEAK: the measured lower bound exceeds the claimed ε[/]")


@app.command("resume")
def resume(
    ctx: typer.Context,
    run_dir: RunDirArg,
    verbose: Annotated[bool, typer.Option(help="Print Flower's whole log.")] = False,
) -> None:
    """Continue a simulated run after its last completed round (same sites, same run config)."""
    run = RunDirectory.existing(run_dir)
    run_dir, saved = run.path, run.config()
    run.drop_summary()  # the resumed run writes a new one
    console.print(f"fedward sim resume {run_dir.name}: {len(saved['sites'])} sites")
    _launch(ctx).run({**saved["run-config"], "resume": True}, len(saved["sites"]), run_dir, verbose)
    print_summary(run_dir)


@app.command("leave-one-out")
def leave_one_out_command(
    ctx: typer.Context,
    run_dir: RunDirArg,
    verbose: Annotated[bool, typer.Option(help="Print Flower's whole log.")] = False,
) -> None:
    """Federate without each site in turn and evaluate on the site left out (K more runs); the results
    go into the run's cross-site.json."""
    from fedward.simulations.leave_one_out import leave_one_out

    metric = task_spec(RunDirectory.existing(run_dir).run_config()["task"]).primary_metric
    results = leave_one_out(run_dir, _launch(ctx).run, verbose)
    table = Table(title=f"leave one site out · {metric} on the site left out")
    for col in ("site left out", metric, "95 % CI", "roc-auc"):
        table.add_column(col, justify="left" if col == "site left out" else "right")
    for site, m in results.items():
        ci = f"{m.get(metric + '-ci-low', math.nan):.3f}–{m.get(metric + '-ci-high', math.nan):.3f}"
        table.add_row(site, f"{m.get(metric, math.nan):.3f}", ci, f"{m.get('roc-auc', math.nan):.3f}")
    console.print(table)
    console.print(f"written to {run_dir / CROSS_SITE_FILE}")


@app.command("scenarios")
def scenarios() -> None:
    """List the scenarios that ship with fedward."""
    from fedward.simulations.scenario import load_scenario, shipped_scenarios

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
    return f"{spec.scenario.task}, {sites} sites ({p.kind}), {spec.rounds} rounds, {spec.strategy.name}, {dp}"


def _finished(run_dir: Path, spec: Scenario, baselines: bool) -> dict | None:
    """The results of a run folder finished by an earlier sweep (None when it has none)."""
    from fedward.simulations.study import federated_results, read_results

    if baselines:
        return read_results(run_dir)
    run = RunDirectory(run_dir, create=False)
    summary = run.read_optional_json(SUMMARY_FILE)
    if summary is None or not run.has(CONFIG_FILE):
        return None
    run_config = RunConfig.from_flower(run.run_config())
    federated = federated_results(summary, run_config)
    audit = {"empirical-privacy": summary["empirical-privacy"]} if "empirical-privacy" in summary else {}
    return {
        "scenario": spec.name,
        "task": run_config.task,
        "metric": spec.metric,
        "federated": federated,
        **audit,
    }


def print_summary(run_dir: Path) -> None:
    """Final table: overall and per-site metrics (the task's columns) with ε."""
    summary = RunDirectory(run_dir, create=False).read_optional_json(SUMMARY_FILE)
    if summary is None:
        raise typer.Exit(
            _fail(f"the run ended without {run_dir / SUMMARY_FILE}; see {run_dir / 'flower.log'}")
        )
    from fedward.server.report.cli import fitted_tables  # the report's layout: no cell cut at 80 columns

    title = f"{summary['task']} · {summary['strategy']} · {summary['rounds-completed']} rounds"
    metrics = task_spec(summary["task"]).columns

    def cell(value) -> str:
        return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

    sites = list(summary["sites"].items())
    evaluations = [info.get("evaluate") or {} for _, info in sites] + [summary["overall"]]
    counts = [
        "–" if ev.get("num-examples") is None else f"{int(ev['num-examples'])}"  # null: suppressed
        for ev in evaluations
    ]
    epsilon = ["∞" if not summary["dp"] else cell(info.get("epsilon")) for _, info in sites] + [""]
    columns = [("n test", counts), ("ε", epsilon)]
    columns += [(key, [cell(ev.get(key)) for ev in evaluations]) for key in metrics]
    for table in fitted_tables(title, [site for site, _ in sites] + ["overall"], columns, console):
        console.print(table)
    console.print(f"wall time {summary['wall-seconds']:.1f} s · run directory {run_dir}")


def _fail(message: str) -> int:
    console.print(f"[red]error:[/red] {message}")
    return 1
