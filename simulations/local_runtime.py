"""The process that runs one local simulation: fedward's ServerApp and ClientApp on Flower's in-process
simulation engine (`flwr.simulation.run_simulation`, Ray actors as the sites).

No SuperLink, no app bundle, no per-message processes: the ServerApp runs in a thread of this process and
every site is a Ray actor started once and reused across rounds. `simulations/runner.py` starts it as a
child process (so that Ctrl-C or a crash stops the whole tree) and reads its output:

    python -m fedward.simulations.local_runtime SPEC.json

SPEC holds the run config, the number of sites, Flower's backend config and, optionally, the function that
writes the sites' data (run while Ray starts). A failure ends with one line
`fedward: error: <reason>` on stderr and exit code 2; the traceback, if any, goes before it (the run log).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, NoReturn

from fedward.common.errors import FedwardError
from fedward.simulations.local_sites import SiteApp

MODULE = "fedward.simulations.local_runtime"
"""This module's import name (it runs itself in a child process for the data preparation)."""
ERROR_MARK = "fedward: error: "
INTERRUPTED = 130  # the exit code of a run stopped by Ctrl-C (128 + SIGINT)
RAY_START_ATTEMPTS = 2  # a loaded machine can time Ray's node start-up out once


class Background:
    """Work that runs while Ray starts: the sites' data preparation (`prepare`: "module:function" and
    its keyword arguments, if any) and the ServerApp's imports. `wait()` re-raises what failed."""

    def __init__(self, prepare: dict[str, Any] | None) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(prepare,), name="fedward-prepare", daemon=True)
        self.thread.start()

    def _run(self, prepare: dict[str, Any] | None) -> None:
        try:
            if prepare:  # in a process of its own: its libraries (pandas, datasets) leave with it
                done = subprocess.run(
                    [sys.executable, "-m", MODULE, "--prepare", json.dumps(prepare)],
                    capture_output=True, text=True,
                )  # fmt: skip
                if done.returncode != 0:
                    sys.stderr.write(done.stderr)
                    lines = [ln for ln in done.stderr.splitlines() if ln.startswith(ERROR_MARK)]
                    reason = lines[-1][len(ERROR_MARK) :] if lines else f"exit code {done.returncode}"
                    raise FedwardError(f"preparing the sites' data failed: {reason}")
            importlib.import_module("fedward.server.app")
        except BaseException as exc:  # re-raised in the ServerApp thread, which ends the run
            self.error = exc

    def wait(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


def _apps(config: dict[str, Any], background: Background):
    from flwr.serverapp import ServerApp

    server = ServerApp()

    @server.main()
    def main(grid, context) -> None:
        background.wait()  # the sites' data exist before the first message reaches a site
        from fedward.server.app import main as coordinator_main

        context.run_config = dict(config)
        coordinator_main(grid, context)
        end_now(0)  # every result is written: no need to wait for the engine's and Ray's slow shutdown

    return server, SiteApp(config)  # by reference: each Ray actor imports it, keeps its app


def end_now(code: int) -> NoReturn:
    """End this process and every process under it (Ray's GCS, raylet and site actors) at once. Called
    when the run has written its results (run folder, model, signed provenance; each site's ledger is
    committed with its reply): Flower's engine and Ray would otherwise take seconds to wind down."""
    import psutil

    sys.stdout.flush()
    sys.stderr.flush()
    for member in psutil.Process().children(recursive=True):  # nothing of the run is left in them
        with contextlib.suppress(psutil.Error):
            member.kill()
    os._exit(code)


def _ray_start_failed(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return "ray" in text.lower() and ("timed out" in text.lower() or "timeout" in text.lower())


def run(spec: dict[str, Any]) -> None:
    """Run the simulation `spec` describes; raises what the run raised."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # nothing about the run leaves this machine
    # Ctrl-C ends the run here and now: a KeyboardInterrupt in this main thread would leave the ServerApp
    # thread running, and with the sites interrupted too it could finish the rounds and write a summary
    # before `fedward sim` stops this process. The round checkpoints are written atomically, so
    # `fedward sim resume` continues after the last completed round.
    signal.signal(signal.SIGINT, lambda *_: os._exit(INTERRUPTED))
    from flwr.simulation import run_simulation

    from fedward.simulations import engine_pass

    engine_pass.install()  # messages reach the sites when sent, not on the engine's next 100 ms pass
    background = Background(spec.get("prepare"))
    server, client = _apps(spec["run-config"], background)
    logging.getLogger("flwr").setLevel(logging.INFO)
    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        try:
            run_simulation(
                server_app=server, client_app=client, num_supernodes=int(spec["num-sites"]),
                backend_name="ray", backend_config=spec["backend-config"],
            )  # fmt: skip
            return
        except Exception as exc:  # only Ray's own start-up is retried: a run that started is not
            if attempt == RAY_START_ATTEMPTS or not _ray_start_failed(exc):
                raise
            print(f"fedward: Ray did not start in time ({exc}); trying once more", flush=True)


def _reason(exc: BaseException) -> str:
    """The innermost cause, in one line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, FedwardError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def main(argv: list[str]) -> int:
    """Entry point: run the simulation of the spec file `argv[0]` (or, with `--prepare JSON`, only write
    the sites' data); 0 on success, 2 on failure."""
    try:
        if argv[0] == "--prepare":  # the sites' data, in a process of its own
            prepare = json.loads(argv[1])
            module, function = prepare["function"].split(":")
            getattr(importlib.import_module(module), function)(**prepare["kwargs"])
            return 0
        run(json.loads(Path(argv[0]).read_text()))
    except KeyboardInterrupt:
        return INTERRUPTED
    except BaseException as exc:  # the run's end: one line for people, the rest for the log
        traceback.print_exc()
        print(ERROR_MARK + _reason(exc), file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
