"""Scenario files: one TOML file describes a simulated study for `fedward sim run SCENARIO`.

Tables: `[scenario]` (task, sites, rounds, seed, ...), `[partition]`, `[training]`, `[privacy]` with
optional `[privacy.site-N]` (that site's own policy file), `[strategy]`, `[sites]` (dropout,
stragglers, hostile sites), `[data]` (tumour phantoms) and `[run-config]` (any other run-config key).
Keys are kebab-case; an unknown key or a bad value is a ConfigError naming the file and the key.
docs/simulations.md describes every key.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedward.common.config import RunConfig
from fedward.common.errors import ConfigError
from fedward.common.tasks import task_spec
from fedward.common.tomlfile import read_toml
from fedward.common.validation_errors import validation_problems
from fedward.simulations.recipes import RECIPES, Recipe, default_model
from fedward.strategies.registry import STRATEGIES

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"

DEFAULT_ROUNDS = 10  # federated rounds of a scenario whose model has no recipe of its own

# phantom class mix of an `iid` tumour scenario: Dirichlet(this), i.e. practically the same mix everywhere
IID_PHANTOM_SKEW = 1000.0


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class _Table(BaseModel):
    model_config = ConfigDict(
        alias_generator=_kebab, populate_by_name=True, extra="forbid", frozen=True, strict=True
    )


class ScenarioTable(_Table):
    """`[scenario]`: what is simulated."""

    name: str = ""  # default: the file name without .toml
    description: str = ""
    task: Literal["ckd", "tumour", "tumour-seg"] = "ckd"
    sites: int | None = Field(None, ge=1)  # default 3; natural partitions: the column's number of values
    rounds: int | None = Field(None, ge=1)  # default: the model's recipe (simulations/recipes.py), else 10
    seed: int = 0
    data: str = ""  # ckd: a CSV in the UCI CKD format (relative to this file); default the shipped table
    test_fraction: float = Field(0.2, gt=0, lt=1)
    metric: str = ""  # default accuracy (dice for tumour-seg)


class PartitionTable(_Table):
    """`[partition]`: how the data are split into sites."""

    kind: Literal["iid", "dirichlet", "quantity", "pathological", "natural"] = "iid"
    alpha: float | None = Field(None, gt=0, allow_inf_nan=False)  # dirichlet
    min_rows: int | None = Field(None, ge=2)  # dirichlet: fewest rows per site
    sizes: Literal["linear", "square", "exponential"] | None = None  # quantity
    classes_per_site: int | None = Field(None, ge=1)  # pathological
    column: str | None = Field(None, min_length=1)  # natural


class TrainingTable(_Table):
    """`[training]`: local training at each site (defaults depend on the task)."""

    local_epochs: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0, allow_inf_nan=False)
    optimizer: Literal["sgd", "adam"] | None = None
    model: str | None = None


class SitePolicyTable(_Table):
    """`[privacy.site-N]`: the site's own policy (client/policy.py), written to site-N/policy.toml."""

    epsilon_cap: float = Field(gt=0, allow_inf_nan=False)
    delta: float | None = Field(None, gt=0, lt=1)  # default 1/(10 n) of the site's training rows
    min_noise_multiplier: float = Field(0.0, ge=0, allow_inf_nan=False)
    clipping_min: float = Field(0.01, gt=0, allow_inf_nan=False)
    clipping_max: float = Field(100.0, gt=0, allow_inf_nan=False)
    min_samples: int = Field(1, ge=1)


class PrivacyTable(_Table):
    """`[privacy]`: DP-SGD at every site; `epsilon = inf` means no DP."""

    dp: bool = True
    epsilon: float = Field(3.0, gt=0)
    noise_multiplier: float = Field(0.0, ge=0, allow_inf_nan=False)
    delta: float = Field(0.0, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0, allow_inf_nan=False)
    accountant: Literal["prv", "rdp"] = "prv"
    site_policies: dict[int, SitePolicyTable] = Field(default_factory=dict)  # from [privacy.site-N]

    @property
    def private(self) -> bool:
        """DP on: `dp` and a finite ε (or a given noise multiplier)."""
        return self.dp and (math.isfinite(self.epsilon) or self.noise_multiplier > 0)


class StrategyTable(_Table):
    """`[strategy]`: aggregation rule and its parameters (run-config keys of the same name)."""

    name: str = "fedavg"
    proximal_mu: float | None = None
    server_lr: float | None = None
    server_momentum: float | None = None
    server_beta_1: float | None = None
    server_beta_2: float | None = None
    server_tau: float | None = None
    trim_beta: float | None = None
    num_malicious_sites: int | None = None
    multikrum_select: int | None = None
    max_update_norm: float | None = None
    update_norm_factor: float | None = None


class SitesTable(_Table):
    """`[sites]`: how simulated sites misbehave: dropout, stragglers, hostile updates."""

    min_sites: int = Field(0, ge=0)  # 0: all sites, or 1 with dropout or per-site privacy policies
    dropout: float = Field(0.0, ge=0, lt=1)
    stragglers: list[int] = Field(default_factory=list)
    straggler_seconds: float = Field(0.0, ge=0, allow_inf_nan=False)
    hostile: list[int] = Field(default_factory=list)
    hostile_mode: Literal["sign-flip", "scale", "random", "label-flip"] = "sign-flip"
    hostile_scale: float = Field(10.0, gt=0, allow_inf_nan=False)


SiteSize = Annotated[int, Field(ge=4)]


class PhantomTable(_Table):
    """`[data]`: the synthetic MRI sites of the tumour tasks (simulations/phantoms.py)."""

    patients: SiteSize | list[SiteSize] = 60  # one size for every site, or one per site (DP: dozens)
    anatomy: Literal["simple", "mni"] = "simple"  # ellipsoid heads, or the MNI template (anatomy.py)
    format: Literal["dicom", "nifti", "png"] = "dicom"
    contrasts: str = "t1ce,flair"
    image_size: int = Field(32, ge=8)
    slices: int | None = Field(None, ge=1)  # default: the model input's depth (phantoms.phantom_slices)
    binary: bool = False


class Scenario(_Table):
    """A whole scenario file, parsed and checked (`load_scenario`)."""

    scenario: ScenarioTable = Field(default_factory=ScenarioTable)
    partition: PartitionTable = Field(default_factory=PartitionTable)
    training: TrainingTable = Field(default_factory=TrainingTable)
    privacy: PrivacyTable = Field(default_factory=PrivacyTable)
    strategy: StrategyTable = Field(default_factory=StrategyTable)
    sites: SitesTable = Field(default_factory=SitesTable)
    data: PhantomTable = Field(default_factory=PhantomTable)
    run_config: dict[str, Any] = Field(default_factory=dict)
    source: str = "<scenario>"  # the file (set by the loader, not a TOML key)

    @property
    def name(self) -> str:
        """`[scenario] name`, else the file name without its suffix."""
        return self.scenario.name or Path(self.source).stem

    @property
    def metric(self) -> str:
        """The headline metric of result tables and sweeps."""
        return self.scenario.metric or task_spec(self.scenario.task).primary_metric

    @property
    def num_sites(self) -> int | None:
        """Number of sites; None for a natural partition that leaves it to the data."""
        if self.scenario.sites is not None:
            return self.scenario.sites
        return None if self.partition.kind == "natural" else 3

    @property
    def data_path(self) -> Path | None:
        """`[scenario] data` resolved against the scenario file's folder (None: shipped data)."""
        if not self.scenario.data:
            return None
        path = Path(self.scenario.data).expanduser()
        return path if path.is_absolute() else Path(self.source).resolve().parent / path

    @property
    def model(self) -> str:
        """`[training] model`, else the task's default (tumour: `features`, tumour-seg: `voxel-features`;
        `cnn` and `unet` for 2D PNG phantoms)."""
        if self.training.model is not None:
            return self.training.model
        if self.scenario.task in ("tumour", "tumour-seg"):
            return default_model(self.scenario.task, self.image_depth)
        return task_spec(self.scenario.task).training_defaults["model"]

    @property
    def recipe(self) -> Recipe | None:
        """The model's own recipe (tumour `features`, tumour-seg `voxel-features`), else None."""
        return RECIPES.get(self.model) if task_spec(self.scenario.task).imaging else None

    @property
    def rounds(self) -> int:
        """`[scenario] rounds`, else the model's recipe, else 10."""
        if self.scenario.rounds is not None:
            return self.scenario.rounds
        return self.recipe.rounds if self.recipe is not None else DEFAULT_ROUNDS

    @property
    def image_depth(self) -> int:
        """The model input's depth of the phantoms: 0 (2D) for PNG folders."""
        return 0 if self.data.format == "png" else RunConfig().image_depth

    def training_value(self, key: str) -> Any:
        """A `[training]` value, else the model's recipe (simulations/recipes.py) or the task's default."""
        value = getattr(self.training, key)
        if value is not None:
            return value
        if key == "model":
            return self.model
        if self.recipe is not None:
            return self.recipe.training()[key]
        return task_spec(self.scenario.task).training_defaults[key]

    def min_sites(self, num_sites: int) -> int:
        """Sites that must train each round: `[sites] min-sites`, else all (1 with dropout or policies)."""
        if self.sites.min_sites:
            return self.sites.min_sites
        return 1 if self.sites.dropout > 0 or self.privacy.site_policies else num_sites

    def fail(self, *problems: str) -> ConfigError:
        """A ConfigError naming this scenario's file."""
        return ConfigError(f"scenario {self.source}: " + "; ".join(problems))

    def run_config_values(
        self, *, num_sites: int, data_root: str = "", runs_dir: str = "runs", run_name: str = ""
    ) -> dict[str, Any]:
        """The run-config overrides (kebab-case) of this scenario, checked against RunConfig."""
        values, origin = self._run_config(num_sites, data_root, runs_dir, run_name)
        known = {f.alias or n for n, f in RunConfig.model_fields.items()}
        problems = [
            f"{origin[key]}; remove it from [run-config]"
            for key in self.run_config
            if "set by" in origin[key]
        ]
        for key in sorted(set(values) - known):
            where = origin.get(key, f"run-config.{key}")
            if key.startswith("sim-"):
                problems.append(
                    f"{where}: this build's run config has no key {key!r} (client/simulated_faults.py "
                    "is not wired into the client yet)"
                )
            else:
                problems.append(f"{where}: unknown run-config key")
        if problems:
            raise self.fail(*problems)
        try:
            RunConfig.model_validate(values)
        except ValidationError as exc:
            raise self.fail(*validation_problems(exc, origin=origin)) from exc
        return values

    def _run_config(
        self, num_sites: int, data_root: str, runs_dir: str, run_name: str
    ) -> tuple[dict[str, Any], dict[str, str]]:
        s, p, priv, sites = self.scenario, self.partition, self.privacy, self.sites
        origin: dict[str, str] = {
            "task": "scenario.task",
            "dp": "privacy.dp",
            "num-server-rounds": "scenario.rounds",
            "seed": "scenario.seed",
            "test-fraction": "scenario.test-fraction",
            "min-sites": "sites.min-sites",
            "dp-target-epsilon": "privacy.epsilon",
            "dp-noise-multiplier": "privacy.noise-multiplier",
            "dp-delta": "privacy.delta",
            "dp-max-grad-norm": "privacy.max-grad-norm",
            "dp-accountant": "privacy.accountant",
            "strategy": "strategy.name",
            "hostile-sites": "sites.hostile",
            "hostile-mode": "sites.hostile-mode",
            "hostile-scale": "sites.hostile-scale",
            "sim-dropout": "sites.dropout",
            "sim-stragglers": "sites.stragglers",
            "sim-straggler-seconds": "sites.straggler-seconds",
        }
        values: dict[str, Any] = {
            "task": s.task,
            "num-server-rounds": self.rounds,
            "min-sites": self.min_sites(num_sites),
            "seed": s.seed,
            "dp": priv.private,
            "dp-target-epsilon": priv.epsilon if math.isfinite(priv.epsilon) else 3.0,
            "dp-noise-multiplier": priv.noise_multiplier,
            "dp-delta": priv.delta,
            "dp-max-grad-norm": priv.max_grad_norm,
            "dp-accountant": priv.accountant,
            "strategy": self.strategy.name,
            "hostile-sites": ",".join(str(i) for i in sites.hostile),
            "hostile-mode": sites.hostile_mode,
            "hostile-scale": sites.hostile_scale,
            "data-root": data_root,
            "partition": p.kind if p.kind in ("iid", "dirichlet") else "iid",
            "dirichlet-alpha": p.alpha or 0.5,
            "test-fraction": s.test_fraction,
            "runs-dir": runs_dir,
            "run-name": run_name,
        }
        for key in task_spec(s.task).training_defaults:
            values[_kebab(key)] = self.training_value(key)
            origin[_kebab(key)] = f"training.{_kebab(key)}"
        if task_spec(s.task).imaging:  # phantom sites
            d = self.data
            values |= {
                "image-size": d.image_size,
                "image-depth": self.image_depth,
                "mri-contrasts": d.contrasts,
                "tumour-binary": d.binary,
            }
            origin |= {"image-size": "data.image-size", "mri-contrasts": "data.contrasts"}
        for key, value in self.strategy.model_dump(exclude={"name"}).items():
            if value is not None:
                values[_kebab(key)] = value
                origin[_kebab(key)] = f"strategy.{_kebab(key)}"
        if sites.dropout > 0:
            values["sim-dropout"] = sites.dropout
        if sites.stragglers:
            values["sim-stragglers"] = ",".join(str(i) for i in sites.stragglers)
            values["sim-straggler-seconds"] = sites.straggler_seconds
        managed = set(values) | {"data-root", "runs-dir", "run-name"}
        for key, value in self.run_config.items():
            by = origin.get(key, "fedward sim run")
            origin[key] = f"run-config.{key}" + (f" (set by the scenario: {by})" if key in managed else "")
            values[key] = value
        return values, origin

    def with_value(self, key: str, raw: str) -> Scenario:
        """This scenario with one sweep key set (`epsilon`, `strategy`, `alpha`, `sites`, `rounds`).

        `epsilon = inf` switches DP off; any finite ε switches it on.
        """
        try:
            if key == "epsilon":
                epsilon = float(raw)
                if self.privacy.noise_multiplier > 0:
                    raise self.fail("privacy.noise-multiplier: must be 0 to sweep epsilon (σ wins over ε)")
                updated = {"privacy": _updated(self.privacy, dp=math.isfinite(epsilon), epsilon=epsilon)}
            elif key == "strategy":
                updated = {"strategy": _updated(self.strategy, name=raw)}
            elif key == "alpha":
                if self.partition.kind != "dirichlet":
                    raise self.fail(
                        f"partition.kind: sweeping alpha needs 'dirichlet', not {self.partition.kind!r}"
                    )
                updated = {"partition": _updated(self.partition, alpha=float(raw))}
            elif key in ("sites", "rounds"):
                if key == "sites" and self.partition.kind == "natural":
                    raise self.fail(
                        "partition.kind: a natural partition takes its number of sites from the data"
                    )
                updated = {"scenario": _updated(self.scenario, **{key: int(raw)})}
            else:
                raise ConfigError(f"cannot sweep {key!r}; expected one of {', '.join(SWEEP_KEYS)}")
        except ValueError as exc:  # float() / int() of the value, or a ValidationError
            raise ConfigError(f"sweep value {key}={raw!r}: {_first_line(exc)}") from exc
        changed = self.model_copy(update=updated)
        changed.check()
        return changed

    def with_seed(self, seed: int) -> Scenario:
        """This scenario with another `[scenario] seed`."""
        return self.model_copy(update={"scenario": _updated(self.scenario, seed=seed)})

    def check(self, num_sites: int | None = None) -> None:
        """Cross-key rules; with `num_sites` (known once the data are split) also the site indices."""
        problems = _cross_checks(self)
        n = num_sites or self.num_sites
        if n is not None:
            problems += _site_checks(self, n)
        if problems:
            raise self.fail(*problems)
        if n is not None:
            self.run_config_values(num_sites=n)


SWEEP_KEYS = ("epsilon", "strategy", "alpha", "sites", "rounds")
TABLES = ("scenario", "partition", "training", "privacy", "strategy", "sites", "data", "run-config")


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario file; every problem is a ConfigError naming the file and key."""
    path = Path(path)
    document = read_toml(path, "scenario")
    return parse_scenario(document, path)


def parse_scenario(document: dict[str, Any], source: str | Path = "<scenario>") -> Scenario:
    """Check a parsed scenario document (see `load_scenario`)."""
    problems = [
        f"{key}: unknown table; expected one of {', '.join(TABLES)}" for key in document if key not in TABLES
    ]
    problems += [
        f"{key}: expected a table [{key}]" for key in TABLES if not isinstance(document.get(key, {}), dict)
    ]
    if problems:
        raise ConfigError(f"scenario {source}: " + "; ".join(problems))
    privacy = dict(document.get("privacy", {}))
    policies: dict[int, SitePolicyTable] = {}
    for key in [
        k for k, v in privacy.items() if isinstance(v, dict) or k in ("site-policies", "site_policies")
    ]:
        table = privacy.pop(key)
        match = re.fullmatch(r"site-(\d+)", key)
        if match is None or not isinstance(table, dict):
            problems.append(f"privacy.{key}: unknown key; per-site settings go in [privacy.site-N] tables")
            continue
        try:
            policies[int(match[1])] = SitePolicyTable.model_validate(table)
        except ValidationError as exc:
            problems += validation_problems(exc, prefix=f"privacy.{key}")
    try:
        scenario = Scenario.model_validate(
            {**document, "privacy": {**privacy, "site-policies": policies}, "source": str(source)}
        )
    except ValidationError as exc:
        problems += validation_problems(exc)
    if problems:
        raise ConfigError(f"scenario {source}: " + "; ".join(problems))
    scenario.check()
    return scenario


def find_scenario(name_or_path: str | Path) -> Path:
    """A scenario file: a path, or the name of a shipped scenario (simulations/scenarios/NAME.toml)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = SCENARIO_DIR / f"{Path(str(name_or_path)).stem}.toml"
    if shipped.is_file():
        return shipped
    names = ", ".join(p.stem for p in shipped_scenarios())
    raise ConfigError(f"scenario {name_or_path}: no such file, nor a shipped scenario ({names})")


def shipped_scenarios() -> list[Path]:
    """The documented scenarios that ship with fedward."""
    return sorted(SCENARIO_DIR.glob("*.toml"))


def _cross_checks(sc: Scenario) -> list[str]:
    s, p, problems = sc.scenario, sc.partition, []
    used = {"alpha": "dirichlet", "min_rows": "dirichlet", "sizes": "quantity"}
    used |= {"classes_per_site": "pathological", "column": "natural"}
    for field, kind in used.items():
        if getattr(p, field) is not None and p.kind != kind:
            problems.append(f"partition.{_kebab(field)}: only used with kind = {kind!r}, not {p.kind!r}")
    if p.kind == "natural" and p.column is None:
        problems.append("partition.column: required with kind = 'natural' (e.g. column = \"hospital\")")
    if not task_spec(s.task).imaging:
        if sc.data != PhantomTable():
            problems.append("data: the [data] table describes tumour phantoms; task 'ckd' does not use it")
    else:
        if p.kind not in ("iid", "dirichlet"):
            problems.append(f"partition.kind: tumour phantoms support 'iid' and 'dirichlet', not {p.kind!r}")
        if s.data:
            problems.append("scenario.data: tumour scenarios generate phantom sites; a CSV is only for ckd")
        problems += [
            f"privacy.site-{i}.delta: required for tumour tasks (the site's number of training images is "
            "known only once its data are read)"
            for i, policy in sorted(sc.privacy.site_policies.items())
            if policy.delta is None
        ]
    spec = task_spec(s.task)
    if sc.training_value("model") not in spec.models:
        problems.append(
            f"training.model: expected one of {', '.join(spec.models)} for {s.task}, "
            f"got {sc.training.model!r}"
        )
    if sc.metric not in spec.metrics:
        problems.append(
            f"scenario.metric: expected one of {', '.join(spec.metrics)} for {s.task}, got {sc.metric!r}"
        )
    if sc.strategy.name not in STRATEGIES:
        problems.append(f"strategy.name: expected one of {', '.join(STRATEGIES)}, got {sc.strategy.name!r}")
    if sc.privacy.site_policies and not sc.privacy.private:
        problems.append(
            "privacy.site-N: a site policy requires DP; set privacy.dp = true and a finite epsilon"
        )
    if sc.sites.stragglers and sc.sites.straggler_seconds <= 0:
        problems.append("sites.straggler-seconds: must be > 0 when sites.stragglers lists sites")
    return problems


def _site_checks(sc: Scenario, num_sites: int) -> list[str]:
    problems = []
    for key, indices in (("sites.hostile", sc.sites.hostile), ("sites.stragglers", sc.sites.stragglers)):
        bad = [i for i in indices if not 0 <= i < num_sites]
        if bad:
            problems.append(f"{key}: site indices must be 0..{num_sites - 1}, got {bad}")
    problems += [
        f"privacy.site-{i}: there is no site {i} among {num_sites} sites (0..{num_sites - 1})"
        for i in sorted(sc.privacy.site_policies)
        if i >= num_sites
    ]
    if sc.sites.min_sites > num_sites:
        problems.append(f"sites.min-sites: {sc.sites.min_sites} is more than the {num_sites} sites")
    if sc.scenario.sites is not None and sc.partition.kind == "natural" and sc.scenario.sites != num_sites:
        problems.append(f"scenario.sites: {sc.scenario.sites}, but the column has {num_sites} values")
    return problems


def _updated(table: _Table, **changes: Any) -> Any:
    """A validated copy of `table` with `changes` (by field name)."""
    return type(table).model_validate({**table.model_dump(), **changes})


def _first_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(validation_problems(exc))
    return str(exc).splitlines()[0]
