"""Helpers for tests that start real Flower processes: wait for a condition, stop process groups."""

from __future__ import annotations

import contextlib
import os
import signal
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
    from common.errors import ConfigError
    from server.deployment.proxy import nginx_program

    try:
        return nginx_program()
    except ConfigError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}; .ci/run must `apt-get install -y nginx`")
        pytest.skip(f"{exc} (required when CI is set)")
