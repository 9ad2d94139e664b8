"""Optional MLflow logging of a run: only when `mlflow` is importable and MLFLOW_TRACKING_URI is set."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from fedward.common.errors import FedwardError
from fedward.server.report.data import RunData, is_metric_key, number

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


def _name(text: str) -> str:
    """MLflow keys allow letters, digits, `_ - . /` and spaces."""
    return _UNSAFE.sub("_", text)


def _params(run: RunData) -> dict[str, str]:
    return {_name(k): str(v)[:500] for k, v in sorted(run.config.items())}


def _round_metrics(record: dict[str, Any]) -> dict[str, float]:
    """Overall metrics as `<metric>`, per-site ones as `<site>/<metric>`, ε as `<site>/epsilon`."""
    out = {}
    for key, value in (record.get("overall") or {}).items():
        if is_metric_key(key) and math.isfinite(number(value)):
            out[_name(key)] = number(value)
    for site, entry in (record.get("sites") or {}).items():
        for key, value in ((entry or {}).get("evaluate") or {}).items():
            if is_metric_key(key) and math.isfinite(number(value)):
                out[_name(f"{site}/{key}")] = number(value)
    for site, epsilon in (record.get("epsilon") or {}).items():
        if math.isfinite(number(epsilon)):
            out[_name(f"{site}/epsilon")] = number(epsilon)
    return out


def mlflow_enabled() -> bool:
    """True when MLFLOW_TRACKING_URI is set and mlflow can be imported."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return False
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return False
    return True


def log_to_mlflow(run: RunData, artifacts: list[Path], experiment: str = "fedward") -> str | None:
    """Log params, metrics per round (step = round) and `artifacts`; the MLflow run id (None: disabled)."""
    if not mlflow_enabled():
        return None
    import mlflow

    try:
        return _log(mlflow, run, artifacts, experiment)
    except Exception as exc:  # mlflow's errors (a refused store, a server down): one line, no traceback
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FedwardError(
            f"MLflow ({os.environ['MLFLOW_TRACKING_URI']}) did not take the run: {reason} "
            f"(the report itself is written under {run.path})"
        ) from exc


def _log(mlflow: Any, run: RunData, artifacts: list[Path], experiment: str) -> str:
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment)
    with mlflow.start_run(run_name=run.name) as active:
        mlflow.set_tags({"task": run.task, "strategy": run.strategy, "run-dir": str(run.path)})
        mlflow.log_params(_params(run))
        for record in run.rounds:
            mlflow.log_metrics(_round_metrics(record), step=int(record["round"]))
        for path in artifacts:
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=path.name)
            elif path.is_file():
                mlflow.log_artifact(str(path))
        return str(active.info.run_id)
