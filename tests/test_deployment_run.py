"""A whole provisioned federation on 127.0.0.1 through the fedward commands hospital IT and the
coordinator run: `coordinator start` (TLS + SuperNode auth), two `site start`, `fedward run` (CKD)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flower_processes import stop_groups, wait_for

from server import deploy, launch
from server.provision import provision
from simulations.prepare import prepare_ckd_sites

BIN = Path(sys.executable).parent
FEDWARD = str(BIN / "fedward")
POLICY = """[policy]
epsilon-cap = 50.0
delta = 1e-3
clipping-min = 0.1
clipping-max = 5.0
allowed-tasks = ["ckd"]
min-samples = 10
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (BIN / "flower-superlink").exists(), reason="Flower CLIs not installed"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Procs:
    """fedward commands, each in its own process group (with the Flower programs it starts)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.logs / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.started.append(proc)
        return proc, log

    def stop_all(self) -> None:
        stop_groups(self.started, grace=10)


@pytest.fixture()
def procs(tmp_path: Path) -> Iterator[_Procs]:
    """Every process group started by the test dies at teardown."""
    started = _Procs(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


def test_provisioned_federation_runs_ckd_and_rejects_a_foreign_kit(tmp_path: Path, procs: _Procs) -> None:
    started = time.monotonic()
    port = _free_port()
    fed = provision(tmp_path / "federation", ["H1", "H2"], sans=["127.0.0.1"], port=port, name="deployfed")
    foreign = provision(tmp_path / "other", ["H1"], sans=["127.0.0.1"], port=port, name="other")
    data = prepare_ckd_sites(tmp_path / "data", 2, "iid")
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    runs = tmp_path / "runs"

    _, coordinator_log = procs.start(
        "coordinator", [FEDWARD, "coordinator", "start", "--federation", str(fed.root), "--host", "127.0.0.1"]
    )
    logs = [coordinator_log]
    wait_for("the coordinator", lambda: "coordinator ready" in coordinator_log.read_text(), 60, logs)
    assert "site H1: registered as node" in coordinator_log.read_text()
    ready = time.monotonic()

    def site(name: str, kit: Path, folder: Path) -> tuple[subprocess.Popen[bytes], Path]:
        return procs.start(
            name,
            [
                FEDWARD, "site", "start", "--kit", str(kit), "--data", str(folder),
                "--state", str(tmp_path / f"state-{name}"), "--policy", str(policy),
                "--superlink", f"127.0.0.1:{port}", "--port", str(_free_port()),
            ],
        )  # fmt: skip

    for name, folder in zip(("H1", "H2"), data, strict=True):
        logs.append(site(name, fed.sites[name].dir, folder)[1])
    intruder, intruder_log = site("foreign", foreign.sites["H1"].dir, data[0])
    run, run_log = procs.start(
        "run",
        [
            FEDWARD, "run", "--federation", str(fed.root), "--poll", "2", "--timeout", "240",
            "-c", "num-server-rounds=2 min-sites=2 dp-accountant=\"rdp\"",
            "-c", f'runs-dir="{runs}" run-name="deploy"',
        ],
    )  # fmt: skip
    logs.append(run_log)

    # a kit from another federation stops before connecting, with one sentence and no traceback
    assert intruder.wait(timeout=60) == 2
    message = intruder_log.read_text()
    assert "is not the one this kit trusts" in message and "Traceback" not in message

    # registering again is harmless
    again = subprocess.run(
        [FEDWARD, "coordinator", "register", "--federation", str(fed.root)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("key already known to the SuperLink") == 2

    wait_for("the run to end", lambda: run.poll() is not None, 240, logs)
    output = run_log.read_text()
    assert run.returncode == 0, output + "\n".join(p.read_text()[-3000:] for p in logs)
    run_id = int(re.search(r"run (\d+) submitted", output).group(1))  # type: ignore[union-attr]

    # the outcome, checked independently: Flower's run status and the run directory
    with deploy.cli_home(deploy.load_federation(fed.root)) as home:
        status = launch.run_status(deploy.load_federation(fed.root), home, run_id)
    assert status["status"] == "finished:completed"
    summary = json.loads((runs / "deploy" / "summary.json").read_text())
    assert summary["rounds-completed"] == 2 and summary["stopped"] is None
    assert sorted(summary["sites"]) == ["H1", "H2"]
    assert all(s["epsilon"] is not None and s["epsilon"] > 0 for s in summary["sites"].values())
    print(f"coordinator ready after {ready - started:.1f} s, whole test {time.monotonic() - started:.1f} s")
