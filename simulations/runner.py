"""Run the fedward app on Flower's simulation runtime.

A local simulation runs on Flower's in-process engine (`simulations/local_runtime.py`, one child process:
ServerApp thread, sites as Ray actors started once). Joining a Ray cluster goes through `flwr run` and a
simulation SuperLink this process owns (runtime dependency installation off, so nothing is downloaded),
stopped when the run ends.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from fedward.common.config import RunConfig
from fedward.common.device import cuda_present
from fedward.common.errors import ConfigError, FedwardError
from fedward.simulations.local_runtime import ERROR_MARK

FEDERATION = "fedward-sim"


def app_dir() -> Path:
    """The fedward app folder (the one holding pyproject.toml)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise FedwardError(f"no pyproject.toml in {root}: run fedward from a source checkout")
    return root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).exists():
        raise FedwardError(f"'{name}' not found next to {sys.executable}; is flwr installed?")
    return found


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FedwardError(f"the simulation SuperLink exited with code {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise FedwardError(f"the simulation SuperLink did not open port {port} within {timeout:.0f} s")


@dataclass(frozen=True)
class SitePreparation:
    """A function that writes the simulated sites' data: "module:function" and JSON-able keyword
    arguments (the simulation process calls it while Ray starts)."""

    function: str
    kwargs: dict[str, Any]

    def spec(self) -> dict[str, Any]:
        return {"function": self.function, "kwargs": self.kwargs}

    def run(self) -> None:
        """Call it here."""
        module, name = self.function.split(":")
        getattr(importlib.import_module(module), name)(**self.kwargs)


@dataclass(frozen=True)
class SimulationResources:
    """Ray settings of a simulation. Sites run concurrently up to min(CPUs / cpus_per_site,
    GPUs / gpus_per_site). `ray_address` joins an existing Ray cluster instead of starting a local one
    (then `total_cpus` / `total_gpus` come from the cluster and must stay unset)."""

    cpus_per_site: int = 1
    gpus_per_site: float | None = None  # None: a fifth of a GPU when CUDA is present, else none
    total_cpus: int | None = None  # None: every CPU of this machine
    total_gpus: int | None = None
    ray_address: str | None = None

    def gpus(self) -> float:
        """GPUs per site: as set, else a fifth of a GPU when CUDA is present (probed without torch)."""
        if self.gpus_per_site is not None:
            return self.gpus_per_site
        return 0.2 if cuda_present() else 0.0

    def backend_config(self) -> dict[str, dict[str, int | float]]:
        """Flower's in-process simulation backend config for these resources (a local Ray)."""
        init: dict[str, int | float] = {}
        if self.total_cpus:
            init["num_cpus"] = self.total_cpus
        if self.total_gpus:
            init["num_gpus"] = self.total_gpus
        return {
            "client_resources": {"num_cpus": self.cpus_per_site, "num_gpus": self.gpus()},
            "init_args": init,
        }

    def federation_config(self) -> str:
        """The `flwr run --federation-config` items for these resources."""
        if self.ray_address and (self.total_cpus or self.total_gpus):
            raise ConfigError(
                "with a Ray cluster address the cluster decides the CPUs and GPUs; drop --total-*"
            )
        items = [
            f"client-resources-num-cpus={self.cpus_per_site}",
            f"client-resources-num-gpus={self.gpus()}",
        ]
        if self.total_cpus:
            items.append(f"init-args-num-cpus={self.total_cpus}")
        if self.total_gpus:
            items.append(f"init-args-num-gpus={self.total_gpus}")
        return " ".join(items)


def run_simulation(
    run_config: Mapping[str, Any],
    num_sites: int,
    *,
    resources: SimulationResources | None = None,
    overrides: Mapping[str, Any] | None = None,
    log_file: Path | None = None,
    verbose: bool = False,
    echo: Callable[[str], None] | None = None,
    prepare: SitePreparation | None = None,
) -> None:
    """Run the app with `num_sites` simulated sites and the given run config (`overrides` win);
    `prepare` writes the sites' data while the simulation starts (a Ray cluster run: before).

    A local simulation runs on Flower's in-process engine in one child process; with a Ray cluster
    address it goes through a simulation SuperLink (`flwr run`), which joins that cluster. Streams the
    run's log to `log_file`; passes fedward's progress lines and errors (every line with `verbose`) to
    `echo` (default: print). Returns when the run has ended; a failed run raises FedwardError in one line.
    """
    resources = resources or SimulationResources()
    run_config = {**RunConfig().to_flower(), **run_config, **(overrides or {})}
    checked = RunConfig.from_flower(run_config)  # unknown keys and bad values fail before anything starts
    simulated = checked.hostile_sites or checked.sim_dropout or checked.sim_stragglers or checked.audit_dir
    if resources.ray_address and simulated:
        raise ConfigError(
            "hostile sites, simulated faults and audits are client mods of the local simulation only; "
            "a Ray cluster runs the app as deployed (drop hostile-sites / sim-dropout / sim-stragglers / "
            "audit-dir)"
        )
    echo = echo or (lambda line: print(line, end="", flush=True))
    work = Path(tempfile.mkdtemp(prefix="fedward-sim-"))
    try:
        if resources.ray_address:
            if prepare is not None:
                prepare.run()
            _run_on_superlink(run_config, num_sites, resources, work, log_file, verbose, echo)
        else:
            _run_local(run_config, num_sites, resources, work, log_file, verbose, echo, prepare)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _environment(work: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "FLWR_HOME": str(work / "flwr"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
        # the SuperLink launches flower-superexec by name: make this environment's tools visible
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    env.pop("RAY_ADDRESS", None)
    return env


def _run_local(
    run_config: dict[str, Any],
    num_sites: int,
    resources: SimulationResources,
    work: Path,
    log_file: Path | None,
    verbose: bool,
    echo: Callable[[str], None],
    prepare: SitePreparation | None,
) -> None:
    """The run on Flower's in-process simulation engine, in a child process (`local_runtime`)."""
    spec = work / "simulation.json"
    spec.write_text(
        json.dumps(
            {
                "run-config": run_config,
                "num-sites": num_sites,
                "backend-config": resources.backend_config(),
                "prepare": prepare.spec() if prepare else None,
            }
        )
    )
    env = _environment(work)
    env["PYTHONPATH"] = os.pathsep.join([str(app_dir()), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "fedward.simulations.local_runtime", str(spec)]
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    ) as proc:
        try:
            failed, error = _stream(proc, log_file, verbose, echo)
        except BaseException:  # Ctrl-C: stop the run and its Ray workers now
            _stop(proc, interrupt=True)
            raise
        if proc.returncode == 0 and not failed:
            return
        _stop(proc)  # Ray workers the run left behind
    where = f" (log: {log_file})" if log_file else ""
    raise FedwardError(f"the simulation failed: {error or f'exit code {proc.returncode}'}{where}")


def _run_on_superlink(
    run_config: dict[str, Any],
    num_sites: int,
    resources: SimulationResources,
    work: Path,
    log_file: Path | None,
    verbose: bool,
    echo: Callable[[str], None],
) -> None:
    """The run through a simulation SuperLink this process owns and `flwr run` (joins a Ray cluster)."""
    port = _free_port()
    env = _environment(work)
    if resources.ray_address:  # ray.init() in Flower's simulation process joins this cluster
        env["RAY_ADDRESS"] = resources.ray_address
    (work / "flwr").mkdir()
    (work / "flwr" / "config.toml").write_text(
        f'[superlink]\ndefault = "{FEDERATION}"\n\n'
        f'[superlink.{FEDERATION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    config_file = work / "run-config.toml"
    config_file.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in run_config.items()))
    superlink_log = (log_file.with_name("superlink.log") if log_file else work / "superlink.log").open("w")
    superlink = subprocess.Popen(
        [
            _tool("flower-superlink"), "--insecure", "--simulation",
            "--isolation", "subprocess", "--host", "127.0.0.1", "--port", str(port),
            "--database", str(work / "state.db"), "--disable-runtime-dependency-installation",
        ],
        env=env, stdout=superlink_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_for_port(port, superlink)
        federation = f"num-supernodes={num_sites} {resources.federation_config()}"
        command = [
            _tool("flwr"), "run", str(app_dir()), FEDERATION, "--stream",
            "--federation-config", federation, "--run-config", str(config_file),
        ]  # fmt: skip
        with subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            try:
                failed, error = _stream(proc, log_file, verbose, echo)
            except BaseException:  # Ctrl-C: the run lives in the SuperLink, stop it now
                _stop(superlink)
                proc.kill()
                raise
        if proc.returncode != 0:
            raise FedwardError(f"`flwr run` failed with exit code {proc.returncode}")
        if failed:  # `flwr run` exits 0 when the run itself fails
            where = f"; see {log_file}" if log_file else ""
            raise FedwardError(f"the federated run failed{where}{': ' + error if error else ''}")
    finally:
        _stop(superlink)
        superlink_log.close()


def _stream(
    proc: subprocess.Popen, log_file: Path | None, verbose: bool, echo: Callable[[str], None]
) -> tuple[bool, str | None]:
    """Copy the run's output to the log and the worthwhile lines to `echo` until it ends; whether a
    failure mark was seen, and the run's one-line error if it printed one."""
    failed, error = False, None
    sink = log_file.open("a") if log_file else None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            failed = failed or any(mark in line for mark in _FAILURE_MARKS)
            if line.startswith(ERROR_MARK):
                error = line[len(ERROR_MARK) :].strip()
            if sink:
                sink.write(line)
            if verbose or _worth_showing(line):
                echo(line)
        proc.wait()
    finally:
        if sink:
            sink.close()
    return failed, error


_FAILURE_MARKS = ("Simulation raised an exception", "ServerApp raised an exception")


_SITE_LINE = re.compile(r"(?:\x1b\[[\d;]*m)?\([^)\n]*pid=\d+")  # `(ClientAppActor pid=12) ...`, Ray's prefix


def _worth_showing(line: str) -> bool:
    """Progress, fedward's own lines and errors; not a site's own log (Ray actor lines: tracebacks, paths),
    which goes to the run log only: the coordinator names each site's failure in one line."""
    if _SITE_LINE.match(line):
        return False
    return line.startswith(("round ", "fedward:")) or "ERROR" in line or "Error" in line


def _stop(proc: subprocess.Popen, interrupt: bool = False) -> None:
    """Stop the SuperLink (or the local runtime) and every process it started. Flower's SuperExec runs in a
    session of its own, with the simulation and its Ray workers under it: the whole tree is collected
    first, so nothing survives as an orphan that would go on with the run. `interrupt`: the local runtime
    gets SIGINT first, which ends it at once (`local_runtime.INTERRUPTED`); SIGTERM would not, as Ray's
    driver turns it into an exit of the main thread only, and the ServerApp thread would finish the run."""
    try:
        root = psutil.Process(proc.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    if interrupt and tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            root.send_signal(signal.SIGINT)
        with contextlib.suppress(psutil.TimeoutExpired):
            root.wait(timeout=5)
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _, alive = psutil.wait_procs(tree, timeout=15)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
