"""`fedward report RUN_DIR`: write the report and print a summary table in the terminal."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from fedward.server.report.data import RunData, confidence_interval, metric_keys, number

if TYPE_CHECKING:  # plots and exports import matplotlib: only when a report is made
    from fedward.server.report.build import Report

console = Console()

ESTIMATES_TITLE = "final metrics"
INTERVALS_TITLE = "95 % confidence intervals"
_MISSING = "–"

# (header, one cell per row); the rows are the sites in order, then "overall"
Column = tuple[str, list[str]]


def _estimate(metrics: dict[str, Any], key: str) -> str:
    x = number(metrics.get(key))
    return _MISSING if math.isnan(x) else f"{x:.3f}"


def _interval(metrics: dict[str, Any], key: str) -> str | None:
    ci = confidence_interval(metrics, key)
    return None if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def _count(metrics: dict[str, Any]) -> str:
    n = number(metrics.get("num-examples"))
    return _MISSING if math.isnan(n) else f"{n:.0f}"


def run_heading(run: RunData) -> str:
    """One line naming the run: name, task, strategy and the rounds completed."""
    done = run.rounds[-1]["round"] if run.rounds else 0
    return f"{run.name} · {run.task} · {run.strategy} · {done} rounds"


def summary_columns(run: RunData) -> tuple[list[str], list[Column], list[Column]]:
    """(row labels, point-estimate columns, interval columns) of the final metrics.

    Rows are the sites, sorted, then "overall". The estimates are n (test examples), each site's ε
    (first, so that it stays in the first table when the metrics need more than one) and every metric;
    the intervals are those of the metrics that have a 95 % interval in some row.
    """
    bounded, others = metric_keys(run)
    keys = bounded + others
    evaluations = sorted(run.final_evaluations().items())
    rows = [*evaluations, ("overall", run.final_overall())]
    epsilon = (run.rounds[-1].get("epsilon") or {}) if run.rounds else {}
    dp_off = run.config.get("dp") is False

    def eps_text(site: str) -> str:
        eps = number(epsilon.get(site))
        return "∞" if dp_off else (_MISSING if math.isnan(eps) else f"{eps:.3f}")

    estimates: list[Column] = [
        ("n", [_count(m) for _, m in rows]),
        ("ε", [*(eps_text(site) for site, _ in evaluations), ""]),
    ]
    estimates += [(key, [_estimate(m, key) for _, m in rows]) for key in keys]
    intervals: list[Column] = []
    for key in keys:
        cells = [_interval(m, key) for _, m in rows]
        if any(cells):
            intervals.append((key, [cell or _MISSING for cell in cells]))
    return [site for site, _ in rows], estimates, intervals


def _table(title: str, labels: list[str], columns: list[Column]) -> Table:
    table = Table(
        title=title,
        title_justify="left",
        min_width=len(title),
        box=box.HORIZONTALS,
        show_edge=False,
        pad_edge=False,
    )
    table.add_column("site", overflow="fold")
    for header, _ in columns:
        table.add_column(header, justify="right", overflow="fold")
    for i, label in enumerate(labels):
        overall = i == len(labels) - 1
        if overall:
            table.add_section()
        table.add_row(Text(label, style="bold" if overall else ""), *(cells[i] for _, cells in columns))
    return table


def fitted_tables(title: str, labels: list[str], columns: list[Column], out: Console) -> list[Table]:
    """`columns` beside the row labels, split over as few tables as fit `out`'s width untruncated."""
    natural = out.options.update_width(1 << 16)  # measure unclamped, compare with the real width
    groups: list[list[Column]] = []
    for column in columns:
        if groups:
            wider = _table(title, labels, [*groups[-1], column])
            if Measurement.get(out, natural, wider).maximum <= out.options.max_width:
                groups[-1].append(column)
                continue
        groups.append([column])
    return [
        _table(title if i == 0 else f"{title} (continued)", labels, group) for i, group in enumerate(groups)
    ]


def summary_tables(run: RunData, out: Console | None = None) -> list[Table]:
    """The final metrics per site and overall (with each site's ε), then their 95 % intervals, each
    split over as many tables as it takes to read in full at `out`'s width (80 columns included)."""
    out = out or console
    labels, estimates, intervals = summary_columns(run)
    tables = fitted_tables(ESTIMATES_TITLE, labels, estimates, out)
    return tables + (fitted_tables(INTERVALS_TITLE, labels, intervals, out) if intervals else [])


def print_report(report: Report, out: Console | None = None) -> None:
    """The run's heading and summary tables, how the run ended and where the files are."""
    out = out or console
    out.print(f"[bold]{escape(run_heading(report.run))}[/bold]", highlight=False)
    for table in summary_tables(report.run, out):
        out.print(table)
    stopped = (report.run.summary or {}).get("stopped")
    if report.run.summary is None:
        out.print("[yellow]no summary.json: the run is unfinished or crashed[/yellow]")
    elif stopped:
        out.print(f"[red]stopped:[/red] {escape(str(stopped))}", highlight=False)
    audit = report.run.empirical_privacy
    if audit is not None:
        line = f"empirical privacy at {audit.site}: ε ≥ {audit.epsilon_lower_bound:.2f} (95 %), claimed "
        line += "none (DP off)" if audit.claimed_epsilon is None else f"{audit.claimed_epsilon:.2f}"
        out.print(escape(line) + (" [bold red]LEAK[/bold red]" if audit.leak else ""), highlight=False)
    out.print(f"report: {report.html}", highlight=False, soft_wrap=True)
    out.print(f"figures: {len(report.images)} PNG in {report.html.parent / 'report'}", highlight=False)
    for figure in report.figures:
        if figure.path is None:
            out.print(f"  skipped {figure.name}: {figure.note}", highlight=False)
    if report.tensorboard:
        out.print(f"tensorboard: tensorboard --logdir {report.tensorboard}", highlight=False, soft_wrap=True)
    if report.mlflow_run_id:
        out.print(f"mlflow: run {report.mlflow_run_id}", highlight=False)


def report_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory, e.g. runs/<name>.")],
    tensorboard: Annotated[
        bool, typer.Option(help="Write TensorBoard event files to <run>/tensorboard.")
    ] = True,
    mlflow: Annotated[
        bool, typer.Option(help="Log to MLflow when it is installed and MLFLOW_TRACKING_URI is set.")
    ] = True,
) -> None:
    """Write <run>/report.html (self-contained) and PNG figures, and print the final metrics."""
    from fedward.server.report.build import make_report

    report = make_report(run_dir, tensorboard=tensorboard, mlflow=mlflow)
    print_report(report)
