"""Read a run directory for the report: rounds, summary, cross-site results, and what to plot from them."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedward.common.errors import ConfigError
from fedward.common.tasks import task_spec
from fedward.server.report.empirical_privacy import EmpiricalPrivacy, read_empirical_privacy
from fedward.server.rundir import CONFIG_FILE, CROSS_SITE_FILE, ROUNDS_FILE, SUMMARY_FILE, RunDirectory

BOUNDED = ("accuracy", "roc-auc", "sensitivity", "specificity", "f1", "dice", "dice-voxels")
UNBOUNDED = ("loss", "hd95")
_COUNT = re.compile(
    r"^(tp|fp|tn|fn|seg-tp|seg-fp|seg-fn|site-weight|sites-suppressed|(cm|confusion)-\d+-\d+|cal-\d+-(n|conf|hit)"
    r"|.*-ci-(low|high))$"
)
_CELL = re.compile(r"^(?:cm|confusion)-(\d+)-(\d+)$")


@dataclass
class RunData:
    """Everything the report shows, read from `<run>/`."""

    path: Path
    config: dict[str, Any]  # config.json's run-config
    site_reports: dict[str, dict[str, Any]]  # config.json's per-site data reports
    rounds: list[dict[str, Any]]  # metrics.jsonl, in order
    summary: dict[str, Any] | None  # summary.json (None while a run is unfinished or crashed)
    cross_site: dict[str, Any] | None  # cross-site.json, when evaluated
    empirical_privacy: EmpiricalPrivacy | None = None  # summary.json's audit, after `fedward sim audit`

    @property
    def name(self) -> str:
        """The run name (the folder's name unless config.json says otherwise)."""
        return str(self.config.get("run-name") or self.path.name)

    @property
    def task(self) -> str:
        """The task name."""
        return str((self.summary or {}).get("task") or self.config.get("task", "unknown"))

    @property
    def strategy(self) -> str:
        """The aggregation strategy."""
        return str((self.summary or {}).get("strategy") or self.config.get("strategy", "unknown"))

    @property
    def sites(self) -> list[str]:
        """Site ids seen anywhere in the run, sorted."""
        seen = set(self.site_reports) | set((self.summary or {}).get("sites", {}))
        for record in self.rounds:
            seen |= set(record.get("sites", {})) | set(record.get("epsilon", {}))
        return sorted(seen)

    def final_overall(self) -> dict[str, Any]:
        """The last overall metrics (summary.json, else the last round)."""
        if self.summary and self.summary.get("overall"):
            return dict(self.summary["overall"])
        return dict(self.rounds[-1].get("overall") or {}) if self.rounds else {}

    def final_evaluations(self) -> dict[str, dict[str, Any]]:
        """Each site's last evaluation metrics (summary.json, else the last round); absent sites omitted."""
        sites = (self.summary or {}).get("sites") or {}
        found = {s: dict(info["evaluate"]) for s, info in sites.items() if (info or {}).get("evaluate")}
        if found or not self.rounds:
            return found
        last = self.rounds[-1].get("sites", {})
        return {s: dict(v["evaluate"]) for s, v in last.items() if (v or {}).get("evaluate")}


def _check_cross_site(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(data.get("sites"), list) or not isinstance(data.get("metric"), str):
        raise ConfigError(f"{path}: expected 'sites' (a list of site ids) and 'metric' (a metric name)")
    for key in ("global", "local", "leave-one-out"):
        if key in data and not isinstance(data[key], dict):
            raise ConfigError(f"{path}: '{key}' must be an object keyed by site id")
    return data


def load_run(path: Path) -> RunData:
    """Read `<run>/`; metrics.jsonl is required, the other files are optional."""
    run = RunDirectory.existing(path)
    if not run.has(ROUNDS_FILE):
        raise ConfigError(
            f"{run.path / ROUNDS_FILE}: missing; a run directory needs at least one finished round"
        )
    config = run.read_optional_json(CONFIG_FILE) or {}
    cross = run.read_optional_json(CROSS_SITE_FILE)
    summary = run.read_optional_json(SUMMARY_FILE)
    return RunData(
        path=run.path,
        config=dict(config.get("run-config") or {}),
        site_reports=dict(config.get("sites") or {}),
        rounds=run.rounds(),
        summary=summary,
        cross_site=None if cross is None else _check_cross_site(run.path / CROSS_SITE_FILE, cross),
        empirical_privacy=read_empirical_privacy(summary, run.path / SUMMARY_FILE),
    )


def number(value: Any) -> float:
    """A float, NaN for None or anything not numeric."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def is_metric_key(key: str) -> bool:
    """True for a metric worth plotting (not a count, a CI bound or a weight)."""
    return not _COUNT.match(key) and key != "num-examples" and not key.endswith("-cases")


def metric_keys(run: RunData) -> tuple[list[str], list[str]]:
    """Metrics to show: (those in [0, 1], the others such as loss), known ones first in a fixed order."""
    present: set[str] = set()
    for record in run.rounds:
        present |= {k for k, v in (record.get("overall") or {}).items() if not math.isnan(number(v))}
    present = {k for k in present if is_metric_key(k)}
    bounded = [k for k in BOUNDED if k in present]
    others = [k for k in UNBOUNDED if k in present] + sorted(present - set(BOUNDED) - set(UNBOUNDED))
    return bounded, others


def rounds_of(run: RunData) -> list[int]:
    """Round numbers in order."""
    return [int(r["round"]) for r in run.rounds]


def overall_series(run: RunData, key: str) -> list[float]:
    """The overall value of `key` per round (NaN where absent)."""
    return [number((r.get("overall") or {}).get(key)) for r in run.rounds]


def site_series(run: RunData, site: str, key: str, part: str = "evaluate") -> list[float]:
    """A site's `part` ("evaluate" or "train") value of `key` per round (NaN where absent)."""
    out = []
    for record in run.rounds:
        entry = (record.get("sites") or {}).get(site) or {}
        out.append(number((entry.get(part) or {}).get(key)))
    return out


def epsilon_series(run: RunData, site: str) -> list[float]:
    """A site's cumulative ε per round (NaN before it trained)."""
    return [number((r.get("epsilon") or {}).get(site)) for r in run.rounds]


def confidence_interval(metrics: dict[str, Any], key: str) -> tuple[float, float] | None:
    """(low, high) from `<key>-ci-low` / `<key>-ci-high`, when both are there and finite."""
    low, high = number(metrics.get(f"{key}-ci-low")), number(metrics.get(f"{key}-ci-high"))
    return None if math.isnan(low) or math.isnan(high) else (low, high)


def class_names(task: str, size: int, run_config: dict[str, Any] | None = None) -> list[str]:
    """Axis labels of a `size`-class confusion matrix for `task` (its spec's class names under
    `run_config` when there are `size` of them, else "class i")."""
    try:
        names = task_spec(task).class_names(run_config or {})
    except ConfigError:  # a task this installation does not know
        names = None
    if names is not None and len(names) == size:
        return list(names)
    return [f"class {i}" for i in range(size)]


def _matrix_of(metrics: dict[str, Any]) -> np.ndarray | None:
    """Rows = truth, columns = prediction; from tp/fp/tn/fn or `cm-i-j` / `confusion-i-j` counts."""
    if all(k in metrics for k in ("tp", "fp", "tn", "fn")):
        get = {k: number(metrics[k]) for k in ("tp", "fp", "tn", "fn")}
        return np.array([[get["tn"], get["fp"]], [get["fn"], get["tp"]]])
    cells = {}
    for key, value in metrics.items():
        if match := _CELL.match(key):
            cells[(int(match[1]), int(match[2]))] = number(value)
    if not cells:
        return None
    size = max(max(i, j) for i, j in cells) + 1
    matrix = np.zeros((size, size))
    for (i, j), value in cells.items():
        matrix[i, j] = value  # NaN: a cell the site withheld (common/disclosure.py)
    return matrix


def pooled_confusion(run: RunData) -> tuple[np.ndarray, list[str]] | None:
    """The final round's confusion matrix summed over the sites that sent all cells (else the overall
    counts), with class names."""
    found = map(_matrix_of, run.final_evaluations().values())
    matrices = [m for m in found if m is not None and not np.isnan(m).any()]
    if not matrices:
        overall = _matrix_of(run.final_overall())
        matrices = [overall] if overall is not None and np.nansum(overall) > 0 else []
    if not matrices:
        return None
    size = max(m.shape[0] for m in matrices)
    total = np.zeros((size, size))
    for m in matrices:
        total[: m.shape[0], : m.shape[1]] += np.nan_to_num(m)
    return total, class_names(run.task, size, run.config)


def cross_site_matrix(run: RunData) -> tuple[np.ndarray, list[str], list[str], str] | None:
    """(values, row labels, column sites, metric) of cross-site.json: global, local and leave-one-out rows."""
    cross = run.cross_site
    if not cross:
        return None
    sites, metric = [str(s) for s in cross["sites"]], cross["metric"]

    def value(entry: Any) -> float:
        return number(entry.get(metric)) if isinstance(entry, dict) else number(entry)

    rows, labels = [], []
    if cross.get("global"):
        rows.append([value(cross["global"].get(s)) for s in sites])
        labels.append("global model")
    for trained, evaluated in sorted((cross.get("local") or {}).items()):
        rows.append([value((evaluated or {}).get(s)) for s in sites])
        labels.append(f"local: {trained}")
    if cross.get("leave-one-out"):
        rows.append([value(cross["leave-one-out"].get(s)) for s in sites])
        labels.append("leave-one-out")
    if not rows or not sites:
        return None
    return np.array(rows, dtype=float), labels, sites, metric


def failures(run: RunData) -> list[tuple[int, str]]:
    """(round, text) for every failed site and every rejected update."""
    out = []
    for record in run.rounds:
        out += [(int(record["round"]), str(f)) for f in record.get("failures") or []]
        rejected = record.get("rejected") or {}
        out += [
            (int(record["round"]), f"update of {s} rejected: {why}") for s, why in sorted(rejected.items())
        ]
    return out
