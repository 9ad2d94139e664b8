"""`fedward report RUN_DIR`: write the report and print a summary table in the terminal."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from server.report_data import RunData, confidence_interval, metric_keys, number

if TYPE_CHECKING:  # plots and exports import matplotlib: only when a report is made
    from server.report import Report

console = Console()


def _cell(metrics: dict[str, Any], key: str) -> str:
    x = number(metrics.get(key))
    if math.isnan(x):
        return "–"
    ci = confidence_interval(metrics, key)
    return f"{x:.3f}" + (f" [dim][{ci[0]:.2f}, {ci[1]:.2f}][/dim]" if ci else "")


def summary_table(run: RunData) -> Table:
    """Final metrics per site and overall, with each site's ε."""
    bounded, others = metric_keys(run)
    keys = bounded + others
    done = run.rounds[-1]["round"] if run.rounds else 0
    table = Table(title=f"{run.name} · {run.task} · {run.strategy} · {done} rounds")
    for column in ("site", "n test", *keys, "ε"):
        table.add_column(column, justify="left" if column == "site" else "right")
    epsilon = (run.rounds[-1].get("epsilon") or {}) if run.rounds else {}
    dp_off = run.config.get("dp") is False
    for site, metrics in sorted(run.final_evaluations().items()):
        eps = number(epsilon.get(site))
        eps_text = "∞" if dp_off else ("–" if math.isnan(eps) else f"{eps:.3f}")
        n = number(metrics.get("num-examples"))
        table.add_row(
            site, "–" if math.isnan(n) else f"{n:.0f}", *(_cell(metrics, k) for k in keys), eps_text
        )
    overall = run.final_overall()
    n = number(overall.get("num-examples"))
    table.add_row(
        "[bold]overall",
        "–" if math.isnan(n) else f"{n:.0f}",
        *(_cell(overall, k) for k in keys),
        "",
        end_section=True,
    )
    return table


def print_report(report: Report) -> None:
    """The summary table, how the run ended and where the files are."""
    console.print(summary_table(report.run))
    stopped = (report.run.summary or {}).get("stopped")
    if report.run.summary is None:
        console.print("[yellow]no summary.json: the run is unfinished or crashed[/yellow]")
    elif stopped:
        console.print(f"[red]stopped:[/red] {stopped}", highlight=False)
    console.print(f"report: {report.html}", highlight=False, soft_wrap=True)
    console.print(f"figures: {len(report.images)} PNG in {report.html.parent / 'report'}", highlight=False)
    for figure in report.figures:
        if figure.path is None:
            console.print(f"  skipped {figure.name}: {figure.note}", highlight=False)
    if report.tensorboard:
        console.print(
            f"tensorboard: tensorboard --logdir {report.tensorboard}", highlight=False, soft_wrap=True
        )
    if report.mlflow_run_id:
        console.print(f"mlflow: run {report.mlflow_run_id}", highlight=False)


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
    from server.report import make_report

    report = make_report(run_dir, tensorboard=tensorboard, mlflow=mlflow)
    print_report(report)
