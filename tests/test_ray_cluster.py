"""A simulation joins an existing Ray cluster given its address (a local one the test starts and stops)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from flower_processes import wait_for

from fedward.common.config import RunConfig
from fedward.simulations.prepare import prepare_ckd_sites
from fedward.simulations.runner import SimulationResources, run_simulation

RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_simulation_runs_on_a_ray_cluster_given_its_address(tmp_path: Path) -> None:
    port = _free_port()
    ray_tmp = Path(tempfile.mkdtemp(prefix="fw-ray-", dir="/tmp"))  # Ray's socket paths must stay short
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={ray_tmp}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for("the Ray head", lambda: any(ray_tmp.glob("session_*/logs/raylet.out")), 90, [])
        sites = tmp_path / "sites"
        prepare_ckd_sites(sites, 2, "iid")
        config = RunConfig(
            data_root=str(sites), runs_dir=str(tmp_path / "runs"), run_name="on-cluster",
            num_server_rounds=1, min_sites=2, dp=False,
        )  # fmt: skip
        run_simulation(
            config.to_flower(), 2,
            resources=SimulationResources(ray_address=f"127.0.0.1:{port}"),
            log_file=tmp_path / "flower.log",
        )  # fmt: skip
        summary = json.loads((tmp_path / "runs" / "on-cluster" / "summary.json").read_text())
        assert summary["rounds-completed"] == 1
        # the sites ran as workers of the cluster's job (job id other than the idle workers' ffffffff)
        workers = [p.name for p in ray_tmp.glob("session_*/logs/worker-*.out")]
        jobs = {m.group(1) for n in workers if (m := re.match(r"worker-[0-9a-f]+-([0-9a-f]{8})-\d+\.out", n))}
        assert jobs - {"ffffffff"}, workers
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)


def test_cluster_address_and_machine_totals_exclude_each_other() -> None:
    from fedward.common.errors import ConfigError

    with pytest.raises(ConfigError, match="cluster"):
        SimulationResources(ray_address="127.0.0.1:6379", total_cpus=4).federation_config()
    assert "init-args-num-cpus=2" in SimulationResources(total_cpus=2, gpus_per_site=0).federation_config()
