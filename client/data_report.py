"""What a site's data looks like to fedward, before anything runs: `fedward site check --data DIR`.

The report runs the same loaders and checks a training run runs first (schema and unit harmonisation
for CKD tables, the DICOM PHI gate and the per-file checks for MRI folders) and lists samples and
patients per class, missing values per feature, files skipped with their reasons, PHI findings and unit
conversions, then whether the site can train and be evaluated at all (client/readiness.py: blocking
problems, and warnings for sites too small or too skewed). It stays at the site: it names files and
columns, never values. Whatever a loader raises becomes a one-line blocking problem, never a traceback.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.table import Table

from fedward.client.policy import SitePolicy
from fedward.client.readiness import contrast_readiness, missing_contrasts, readiness
from fedward.common.config import RunConfig
from fedward.common.errors import DataValidationError, FedwardError
from fedward.common.tasks import TaskSpec, task_spec

if TYPE_CHECKING:
    from fedward.common.tasks import SiteData, SiteSource

log = logging.getLogger("fedward.client")


@dataclass
class DataReport:
    """The findings for one data folder and task; `blocking` lists what stops training there."""

    folder: str
    task: str
    samples: int = 0
    patients: int = 0
    per_class: dict[str, dict[str, int]] = field(default_factory=dict)  # class -> samples, patients
    missing_per_feature: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    phi: dict[str, Any] = field(default_factory=dict)
    conversions: list[str] = field(default_factory=list)
    # with `contrasts`: contrast -> patients with it and without it (MRI tasks)
    contrasts: dict[str, dict[str, int]] = field(default_factory=dict)
    cell_issues: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # too small, skewed or short of a contrast
    blocking: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing stops a run from training on this folder."""
        return not self.blocking

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (for JSON)."""
        return {**asdict(self), "ok": self.ok}


def _rows(report: DataReport, site: SiteData) -> None:
    """A table task (one row per patient): missing values, conversions and blanked cells (CKD tables)."""
    from fedward.common.data.ckd import CkdTable
    from fedward.common.data.ckd_schema import FEATURE_NAMES

    report.samples = report.patients = site.num_train + site.num_test
    tables = [site.train, site.test]
    if not all(isinstance(t, CkdTable) for t in tables):
        report.cell_issues = list(site.details)
        return
    missing = np.isnan(np.concatenate([t.x for t in tables])).sum(axis=0)
    report.missing_per_feature = {n: int(m) for n, m in zip(FEATURE_NAMES, missing, strict=True) if m}
    report.conversions = sorted({line for t in tables for line in t.harmonisation})
    report.cell_issues = [d for d in site.details if d not in report.conversions]


def _phi(report: DataReport, folder: Path, phi_gate: str) -> None:
    """The DICOM PHI gate's findings (headers only), blocking under `phi_gate` "block"."""
    from fedward.client.dicom.gate import check_folder

    gate = check_folder(folder)
    report.phi = {"files-checked": gate.files_checked, "files-flagged": len(gate.flagged),
                  "categories": dict(gate.counts), "examples": [str(f) for f in gate.examples]}  # fmt: skip
    if not gate.passed and phi_gate == "block":
        report.blocking.append(
            f"{len(gate.flagged)} file(s) carry PHI ({', '.join(sorted(gate.counts))}); de-identify "
            'them with `fedward site deidentify` or set phi-gate = "warn" in the site policy'
        )


def _contrasts(report: DataReport, found: dict[str, set[str]], contrasts: tuple[str, ...]) -> None:
    """Per contrast the run asks for, patients with and without it; blocks and warnings (counts only)."""
    for name, lacking in (missing_contrasts(found, contrasts) if found else {}).items():
        report.contrasts[name] = {"patients-with": len(found) - lacking, "patients-without": lacking}
    checked = contrast_readiness(found, contrasts)
    report.blocking.extend(checked.blocking)
    report.warnings.extend(checked.warnings)


def _read(
    report: DataReport,
    spec: TaskSpec,
    source: SiteSource,
    config: RunConfig,
    contrasts: tuple[str, ...] | None,
) -> SiteData:
    """The task's site data; for an MRI task with `contrasts`, first the contrast check on the same scan
    (the folder is read once)."""
    task = spec.build()
    if not (contrasts and spec.imaging):  # no monai import for a table task
        return task.load_site(source, config)
    from fedward.common.tasks.mri import MriTask

    if not isinstance(task, MriTask):
        return task.load_site(source, config)
    scan = task.scan(source, config)
    _contrasts(report, scan.contrasts, contrasts)
    return task.site_from_scan(source, config, scan)


def _load(
    report: DataReport,
    folder: Path,
    spec: TaskSpec,
    config: RunConfig,
    phi_gate: str,
    contrasts: tuple[str, ...] | None = None,
) -> SiteData:
    """Load `folder` as a run would (PHI gate first for imaging) and count samples, patients, classes;
    with `contrasts`, an MRI task's folder is also checked for every patient having each of them."""
    from fedward.common.tasks import SiteSource

    if spec.imaging:
        from fedward.common.data.mri.folder import kept_site_folder

        with kept_site_folder(folder):  # one listing and one parse per file, for the gate and the loader
            _phi(report, folder, phi_gate)
            site = _read(report, spec, SiteSource("site", folder), config, contrasts)
    else:
        site = _read(report, spec, SiteSource("site", folder), config, contrasts)
    if spec.unit == "rows":
        _rows(report, site)
        patients: list[object] = list(range(report.samples))
    else:
        patients = list(site.train.patients) + list(site.test.patients)
        report.samples, report.patients = len(patients), len(set(patients))
        report.skipped = list(site.details)
    names = spec.class_names(config.to_flower())
    if spec.labels is not None and names is not None:
        labels = np.concatenate(spec.labels(site))
        for code, name in enumerate(names):
            mine = labels == code
            report.per_class[name] = {
                "samples": int(mine.sum()),
                "patients": len({p for p, m in zip(patients, mine, strict=True) if m}),
            }
    return site


def check_site_data(
    folder: Path,
    task: str,
    *,
    config: RunConfig | None = None,
    phi_gate: str = "block",
    min_samples: int = 1,
    policy: SitePolicy | None = None,
    contrasts: tuple[str, ...] | None = None,
) -> DataReport:
    """Scan `folder` for `task` as a training run would (with `config`'s image settings, else the
    defaults); problems that stop training are listed in `blocking`, sites too small or too skewed to
    train or evaluate well in `warnings`. `contrasts` (canonical names, MRI tasks) replaces the config's
    mri-contrasts and reports how many patients lack each. Never raises for what the data holds."""
    report = DataReport(str(folder), task)
    config = (config or RunConfig()).model_copy(update={"task": task})
    if contrasts:
        config = config.model_copy(update={"mri_contrasts": ",".join(contrasts)})
    site = None
    try:
        site = _load(report, folder, task_spec(task), config, phi_gate, contrasts)
    except DataValidationError as exc:
        report.blocking.extend(str(p) for p in exc.problems)
    except FedwardError as exc:
        report.blocking.append(str(exc))
    except Exception as exc:  # a loader bug or a file no check foresaw: one line, the detail in the log
        log.debug("site check of %s for %s failed", folder, task, exc_info=True)
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        report.blocking.append(
            f"{folder}: reading the {task} data failed ({type(exc).__name__}: {first}); expected files the "
            f"{task} loaders accept (see docs/site-data.md)"
        )
    if site is not None:
        found = readiness(site, task, config, policy)
        report.blocking.extend(found.blocking)
        report.warnings.extend(found.warnings)
    if not report.blocking and report.samples < min_samples:
        report.blocking.append(
            f"{report.samples} usable samples; the site policy needs at least {min_samples}"
        )
    return report


def print_report(report: DataReport, console: Console) -> None:
    """The report as rich tables: classes, missing values, conversions, skipped files, PHI, blockers."""
    verdict = "[green]ok[/green]" if report.ok else "[red]BLOCKED[/red]"
    console.print(
        f"[bold]{report.task}[/bold] data in {report.folder}: {report.samples} samples, "
        f"{report.patients} patients — {verdict}"
    )
    if report.per_class:
        table = Table("class", "samples", "patients", title="per class")
        for name, counts in report.per_class.items():
            table.add_row(name, str(counts["samples"]), str(counts["patients"]))
        console.print(table)
    if report.contrasts:
        table = Table("contrast", "patients with", "patients without", title="contrasts the run asks for")
        for name, counts in report.contrasts.items():
            table.add_row(name, str(counts["patients-with"]), str(counts["patients-without"]))
        console.print(table)
    if report.missing_per_feature:
        table = Table("feature", "missing", title="missing values")
        for name, count in sorted(report.missing_per_feature.items(), key=lambda kv: -kv[1]):
            table.add_row(name, str(count))
        console.print(table)
    sections = (
        ("unit and name conversions", report.conversions),
        ("cells blanked or rows dropped", report.cell_issues),
        ("files skipped", report.skipped),
        ("PHI findings", report.phi.get("examples", [])),
        ("warnings: the site runs, but trains or evaluates less well", report.warnings),
        ("blocking problems", report.blocking),
    )
    for title, lines in sections:
        if lines:
            console.print(f"[bold]{title}[/bold] ({len(lines)}):")
            for line in lines[:20]:
                console.print(f"  {line}", markup=False, highlight=False)
            if len(lines) > 20:
                console.print(f"  ... and {len(lines) - 20} more (see the JSON report)")
