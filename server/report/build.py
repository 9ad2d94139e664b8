"""`fedward report`: a run's report.html, PNG figures, TensorBoard event files and optional MLflow run."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from fedward.server.report.data import RunData, load_run
from fedward.server.report.html import render
from fedward.server.report.mlflow_log import log_to_mlflow
from fedward.server.report.plots import ReportFigure, make_figures
from fedward.server.report.tensorboard_log import write_tensorboard


@dataclass(frozen=True)
class Report:
    """What `make_report` wrote."""

    run: RunData
    html: Path
    figures: list[ReportFigure]
    tensorboard: Path | None
    mlflow_run_id: str | None

    @property
    def images(self) -> list[Path]:
        """The PNG files written."""
        return [f.path for f in self.figures if f.path is not None]


def make_report(run_dir: Path, *, tensorboard: bool = True, mlflow: bool = True) -> Report:
    """Write `<run>/report/*.png`, `<run>/report.html` and `<run>/tensorboard/`; log to MLflow when set up."""
    run = load_run(run_dir)
    figures = make_figures(run, run.path / "report")
    html = run.path / "report.html"
    tmp = html.with_suffix(".html.tmp")
    tmp.write_text(render(run, figures, time.strftime("%Y-%m-%d %H:%M:%S %Z")), encoding="utf-8")
    tmp.replace(html)
    events = write_tensorboard(run.path / "tensorboard", run.rounds) if tensorboard else None
    run_id = log_to_mlflow(run, [html, run.path / "report"]) if mlflow else None
    return Report(run=run, html=html, figures=figures, tensorboard=events, mlflow_run_id=run_id)
