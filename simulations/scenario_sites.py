"""Lay out a scenario's simulated sites on disk: data folders, per-site policy files, a partition report.

`<data-root>/site-<i>/` gets the site's data (CKD: `train.csv` and `test.csv`, rows verbatim from the
source table; tumour: phantom DICOM/NIfTI/PNG cases) and, for a `[privacy.site-i]` table, the site's
`policy.toml` (client/policy.py), which the simulated client enforces before every round.
`<data-root>/partition.json` records what each site holds (counts only).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fedward.client.policy import load_policy, validate_policy_for
from fedward.common.data.ckd import load_ckd_csv
from fedward.common.data.partition import natural_ids, partition_indices
from fedward.common.datasets import ckd_csv_path
from fedward.common.errors import FedwardError
from fedward.common.tasks import task_spec
from fedward.simulations.label_skew import dirichlet_parts
from fedward.simulations.prepare import write_ckd_sites
from fedward.simulations.scenario import IID_PHANTOM_SKEW, Scenario, SitePolicyTable

DEFAULT_ALPHA = 0.5


@dataclass
class PreparedSite:
    """One simulated site as written: where, how many rows, which natural id and labels (counts)."""

    index: int
    folder: Path
    num_train: int | None = None  # None: known only once the site reads its data (MRI)
    num_test: int | None = None
    natural_id: str | None = None
    labels: dict[str, int] = field(default_factory=dict)
    policy: Path | None = None
    draw: int | None = None  # Dirichlet: the partitioner seed that met min-rows

    @property
    def site_id(self) -> str:
        """The simulated site's id (as the client names it)."""
        return f"site-{self.index}"


def prepare_scenario_sites(scenario: Scenario, data_root: Path) -> list[PreparedSite]:
    """Write every site of `scenario` under `data_root`; returns them in site order."""
    if task_spec(scenario.scenario.task).imaging:
        sites = _phantom_sites(scenario, data_root)
    else:
        sites = _ckd_sites(scenario, data_root)
    for index, policy in sorted(scenario.privacy.site_policies.items()):
        sites[index].policy = _write_policy(scenario, sites[index], policy)
    report = {
        "kind": scenario.partition.kind,
        "seed": scenario.scenario.seed,
        "sites": [
            {k.replace("_", "-"): v for k, v in asdict(s).items() if k != "folder"} | {"site-id": s.site_id}
            for s in sites
        ],
    }
    (data_root / "partition.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return sites


def _ckd_sites(scenario: Scenario, data_root: Path) -> list[PreparedSite]:
    source = scenario.data_path or ckd_csv_path()
    if not source.is_file():
        raise scenario.fail(f"scenario.data: {source} does not exist (expected a CSV in the UCI CKD format)")
    table = load_ckd_csv(source, strict=False)
    p, seed = scenario.partition, scenario.scenario.seed
    groups = _groups(scenario, source, table.source_rows) if p.kind == "natural" else None
    num_sites = len(natural_ids(groups)) if groups is not None else scenario.num_sites
    assert num_sites is not None
    scenario.check(num_sites)
    draw = seed
    try:
        if p.kind == "dirichlet":  # redraw (seed, seed + 1, ...) until every site has min-rows rows
            min_rows = p.min_rows or max(2, min(20, len(table) // (2 * num_sites)))
            parts, draw = dirichlet_parts(
                table.y, num_sites, p.alpha or DEFAULT_ALPHA, seed, min_rows=min_rows
            )
        else:
            parts = partition_indices(
                table.y,
                num_sites,
                p.kind,
                seed=seed,
                classes_per_site=p.classes_per_site or 1,
                sizes=p.sizes or "linear",
                groups=groups,
            )
    except FedwardError as exc:
        raise scenario.fail(f"partition: {exc}") from exc
    folders = write_ckd_sites(
        data_root, parts, test_fraction=scenario.scenario.test_fraction, seed=seed, source=source
    )
    ids = natural_ids(groups) if groups is not None else [None] * num_sites
    sites = []
    for i, (part, folder) in enumerate(zip(parts, folders, strict=True)):
        counts = np.bincount(table.y[part], minlength=2)
        sites.append(
            PreparedSite(
                i,
                folder,
                num_train=len(pd.read_csv(folder / "train.csv", dtype=str)),
                num_test=len(pd.read_csv(folder / "test.csv", dtype=str)),
                natural_id=ids[i],
                labels={"notckd": int(counts[0]), "ckd": int(counts[1])},
                draw=draw if p.kind == "dirichlet" else None,
            )
        )
    return sites


def _groups(scenario: Scenario, source: Path, source_rows: np.ndarray) -> list[str]:
    """The natural-partition column's value of each validated row."""
    column = str(scenario.partition.column).strip().lower()
    raw = pd.read_csv(source, dtype=str, keep_default_na=False, skipinitialspace=True)
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    if column not in raw.columns:
        raise scenario.fail(
            f"partition.column: {source} has no column {scenario.partition.column!r} "
            f"(columns: {', '.join(raw.columns)})"
        )
    values = raw[column].iloc[source_rows - 1].str.strip()
    empty = [int(r) for r, v in zip(source_rows, values, strict=True) if not v]
    if empty:
        raise scenario.fail(
            f"partition.column: {source}, column {column!r} is empty in row(s) {empty[:10]}; every row "
            "needs a site (natural id)"
        )
    return values.tolist()


def _phantom_sites(scenario: Scenario, data_root: Path) -> list[PreparedSite]:
    from fedward.common.data.mri.sample import parse_contrasts  # imaging stack: only for tumour scenarios
    from fedward.simulations.phantoms import PhantomSpec, generate_sites, phantom_slices

    d, p = scenario.data, scenario.partition
    num_sites = scenario.num_sites or 3
    skew = IID_PHANTOM_SKEW if p.kind == "iid" else (p.alpha or DEFAULT_ALPHA)
    try:
        spec = PhantomSpec(
            size=d.image_size,
            slices=phantom_slices(scenario.image_depth, d.slices),
            contrasts=parse_contrasts(d.contrasts),
            anatomy=d.anatomy,
        )
    except ValueError as exc:
        raise scenario.fail(f"data.contrasts: {exc}") from exc
    if isinstance(d.patients, list) and len(d.patients) != num_sites:
        raise scenario.fail(
            f"data.patients: {len(d.patients)} site sizes for {num_sites} sites; give one per site"
        )
    folders = generate_sites(
        data_root, num_sites, d.patients, fmt=d.format, spec=spec, skew=skew, seed=scenario.scenario.seed
    )
    return [PreparedSite(i, folder) for i, folder in enumerate(folders)]


def _write_policy(scenario: Scenario, site: PreparedSite, policy: SitePolicyTable) -> Path:
    """`site-i/policy.toml` from `[privacy.site-i]`, checked as the client will check it."""
    key = f"privacy.{site.site_id}"
    delta = policy.delta
    if delta is None:
        assert site.num_train is not None  # tumour scenarios must give delta (Scenario.check)
        delta = 1.0 / (10 * site.num_train)
    lines = [
        "# written by fedward sim run from the scenario's [" + key + "] table",
        "[policy]",
        f"epsilon-cap = {policy.epsilon_cap!r}",
        f"delta = {delta!r}",
        f"min-noise-multiplier = {policy.min_noise_multiplier!r}",
        f"clipping-min = {policy.clipping_min!r}",
        f"clipping-max = {policy.clipping_max!r}",
        f'allowed-tasks = ["{scenario.scenario.task}"]',
        f"min-samples = {policy.min_samples}",
    ]
    path = site.folder / "policy.toml"
    path.write_text("\n".join(lines) + "\n")
    try:
        checked = load_policy(path)
        if site.num_train is not None:
            validate_policy_for(checked, site.num_train)
    except FedwardError as exc:
        raise scenario.fail(f"{key}: {exc}") from exc
    return path
