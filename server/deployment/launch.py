"""Launching a run on a running federation and judging its outcome.

`flwr run` only reports that a run was submitted; the outcome comes from the run's status
(`flwr ls --run-id ID`) and from the run directory the ServerApp writes (summary.json).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedward.common.app_signature import APP_SIGNING_KEY, SignedApp, load_private_key, sign_app
from fedward.common.errors import ConfigError, FedwardError
from fedward.server.deployment.superlink import (
    CoordinatorFiles,
    failure,
    flower_env,
    flower_tool,
    flwr_json,
    retrying,
)
from fedward.server.rundir import SUMMARY_FILE, RunDirectory, default_run_name

FINISHED = "finished"
COMPLETED = "finished:completed"


def app_dir(app: Path | None = None) -> Path:
    """The Flower app folder (holding pyproject.toml): `app`, or this source checkout."""
    root = Path(app).expanduser().resolve() if app else Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise ConfigError(f"no pyproject.toml in {root}: give the fedward source folder with --app")
    return root


def run_overrides(items: list[str], default_runs_dir: Path) -> dict[str, Any]:
    """Parse `-c k=v` items as `flwr run` does, add an absolute runs-dir and a fresh run-name, and
    check the result against the run configuration (unknown keys and bad values fail here)."""
    from fedward.common.config import RunConfig  # imports torch and opacus: only when a run is launched

    overrides = _parse_items(items)
    overrides.setdefault("runs-dir", str(default_runs_dir))
    overrides["runs-dir"] = str(Path(str(overrides["runs-dir"])).expanduser().resolve())
    config = RunConfig.from_flower(overrides)
    if not overrides.get("run-name"):
        overrides["run-name"] = default_run_name(config.task)
    return overrides


def _parse_items(items: list[str]) -> dict[str, Any]:
    """`-c k=v` items parsed as `flwr run` parses them."""
    from flwr.common.config import parse_config_args

    try:
        return dict(parse_config_args(items or None))
    except Exception as exc:  # flwr raises click's ClickException or ValueError
        message = getattr(exc, "message", None) or str(exc)
        raise ConfigError(f"--run-config: {message}") from exc


def resume_overrides(run_dir: Path, items: list[str]) -> dict[str, Any]:
    """The run config of an earlier run (its config.json) with resume on; `-c k=v` items win (for
    example a larger num-server-rounds to extend a finished run)."""
    from fedward.common.config import RunConfig

    previous = RunDirectory.existing(run_dir).run_config()
    merged = {**previous, **_parse_items(items), "run-name": run_dir.name, "resume": True}
    RunConfig.from_flower(merged)  # unknown keys and bad values fail here
    return merged


def toml_file(values: dict[str, Any], path: Path) -> Path:
    """Write flat key = value TOML (strings, numbers, booleans)."""
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        else:
            text = json.dumps(str(value))  # a JSON string is a valid TOML basic string
        lines.append(f"{json.dumps(key)} = {text}")
    path.write_text("\n".join(lines) + "\n")
    return path


def sign_for_run(fed: CoordinatorFiles, app: Path, staging: Path) -> SignedApp:
    """A copy of the app folder under `staging`, signed with the federation's app-signing key: sites
    refuse any bundle that is not (client/app_gate.py)."""
    key_file = fed.root / "coordinator" / APP_SIGNING_KEY
    if not key_file.is_file():
        raise ConfigError(
            f"{key_file}: missing; sites run only app bundles signed with the federation's app-signing "
            "key (made by `fedward provision` since app signing; re-provision, or write one with "
            "fedward.server.deployment.provision.write_app_signing_key and send its .pub to every site)"
        )
    return sign_app(app, load_private_key(key_file), staging)


def submit_run(fed: CoordinatorFiles, home: Path, app: Path, overrides: dict[str, Any]) -> int:
    """`flwr run <app> <profile> --format json --run-config FILE`; the new run's id."""
    config = toml_file(overrides, home / "run-config.toml")
    reply = flwr_json(["run", str(app), fed.name, "--run-config", str(config)], home, timeout=600)
    if reply.get("success") is not True or not reply.get("run-id"):
        raise FedwardError(f"the SuperLink did not accept the run: {failure(reply)}")
    return int(reply["run-id"])


def run_status(fed: CoordinatorFiles, home: Path, run_id: int) -> dict[str, Any]:
    """The run's row from `flwr ls --run-id`: "status" is pending, starting, running or finished:<how>."""
    reply = retrying(lambda: flwr_json(["ls", fed.name, "--run-id", str(run_id)], home))
    runs = reply.get("runs") or []
    if reply.get("success") is not True or not runs:
        raise FedwardError(f"cannot read the status of run {run_id}: {failure(reply)}")
    return dict(runs[0])


def wait_for_run(
    status: Callable[[], dict[str, Any]],
    *,
    timeout: float | None,
    poll: float = 3.0,
    on_change: Callable[[str], None] = lambda _s: None,
    pause: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Check `status()` until the run has finished, `pause(poll)` in between; report each new status."""
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = ""
    while True:
        row = status()
        current = str(row.get("status", ""))
        if current != seen:
            seen = current
            on_change(current)
        if current.startswith(FINISHED):
            return row
        if deadline is not None and time.monotonic() > deadline:
            raise FedwardError(f"the run has not finished within {timeout:.0f} s (status: {current})")
        pause(poll)


class LogStream:
    """`flwr log RUN --stream` in the background: echoes the ServerApp's log, and ends when the run does
    (the SuperLink closes the stream once the run has finished), which saves polling `flwr ls`."""

    def __init__(self, fed: CoordinatorFiles, home: Path, run_id: int, echo: Callable[[str], None]) -> None:
        self.proc = subprocess.Popen(
            [flower_tool("flwr"), "log", str(run_id), fed.name, "--stream"],
            env=flower_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self.reader = threading.Thread(target=self._echo, args=(echo,), daemon=True)
        self.reader.start()

    def _echo(self, echo: Callable[[str], None]) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            echo(line)

    def pause(self, seconds: float, longest: float = 30.0) -> None:
        """While the stream runs, wait for it to end (at most `longest` s); afterwards sleep `seconds`."""
        if self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=max(seconds, longest))
        else:
            time.sleep(seconds)

    def close(self) -> None:
        """Stop the stream if it still runs."""
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        self.reader.join(timeout=5)


def check_outcome(row: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Success means: Flower says finished:completed, and the run directory has a summary.json in which
    every planned round was completed and nothing stopped the run. Returns the summary."""
    status = str(row.get("status"))
    if status != COMPLETED:
        details = row.get("status-details") or ""
        hint = f"; see `flwr log {row.get('run-id')}` with the federation's profile"
        raise FedwardError(f"run {row.get('run-id')} ended as {status} {details}".rstrip() + hint)
    summary = RunDirectory(run_dir, create=False).read_optional_json(SUMMARY_FILE)
    if summary is None:
        raise FedwardError(f"run {row.get('run-id')} finished but wrote no {run_dir / SUMMARY_FILE}")
    if summary.get("stopped"):
        raise FedwardError(f"run {row.get('run-id')} stopped early: {summary['stopped']} (see {run_dir})")
    if summary.get("rounds-completed") != summary.get("rounds"):
        done, planned = summary.get("rounds-completed"), summary.get("rounds")
        raise FedwardError(f"run {row.get('run-id')} completed {done} of {planned} rounds (see {run_dir})")
    return summary
