"""Helpers for tests that start real Flower processes: start and stop process groups, wait for a
condition, free ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def stop_groups(processes: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM every process group (newest first), wait up to `grace` s, then SIGKILL what is left
    (children of a leader that already exited stay in its group: SuperExec, app processes)."""
    for proc in reversed(processes):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    for proc in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Procs:
    """fedward commands, each in its own process group (with the Flower programs it starts), each
    writing stdout and stderr to `<logs>/<name>.log`."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, args: list[str], env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """Start `args` in a new session (environment: this one's, or `env`); the process and its log."""
        log = self.logs / f"{name}.log"
        env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.started.append(proc)
        return proc, log

    def stop_all(self) -> None:
        """Stop every process group started (SIGTERM, then SIGKILL after 10 s)."""
        stop_groups(self.started, grace=10)


def wait_for(what: str, check: Callable[[], Any], timeout: float, logs: list[Path]) -> Any:
    """Poll `check` until it returns something truthy; on timeout fail with the logs' tails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")


def require_nginx() -> str:
    """The nginx program the coordinator's TLS proxy runs; missing: fail under CI (.ci/run installs it),
    skip elsewhere."""
    from fedward.common.errors import ConfigError
    from fedward.server.deployment.proxy import nginx_program

    try:
        return nginx_program()
    except ConfigError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}; .ci/run must `apt-get install -y nginx`")
        pytest.skip(f"{exc} (required when CI is set)")
