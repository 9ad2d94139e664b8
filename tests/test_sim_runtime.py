"""Simulation runtime: progress display, the sites' app as Ray holds it, a real run interrupted mid-round
and resumed, leave-one-site-out (a real run that ends at once and keeps its results: test_simulation.py)."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flower_fakes import flower_identity  # noqa: F401 (fixture)
from inprocess_grid import InProcessGrid, run_server
from rich.console import Console

from fedward.common.config import RunConfig
from fedward.server.checkpoint import RoundCheckpoint
from fedward.simulations.leave_one_out import leave_one_out
from fedward.simulations.local_sites import SiteApp
from fedward.simulations.prepare import prepare_ckd_sites
from fedward.simulations.progress import RunProgress

FEDWARD = str(Path(sys.executable).parent / "fedward")


def test_progress_is_a_bar_in_a_terminal_and_plain_lines_elsewhere() -> None:
    lines = [
        "fedward: run directory /x\n",
        "round  1/3  accuracy 0.900  ε max 1.00\n",
        "round  2/3  accuracy 0.950\n",
    ]
    plain = io.StringIO()
    with RunProgress(Console(file=plain, force_terminal=False, width=120)) as progress:
        for line in lines:
            progress.feed(line)
    assert plain.getvalue().splitlines() == [line.rstrip("\n") for line in lines]

    shown = io.StringIO()
    with RunProgress(Console(file=shown, force_terminal=True, width=120), "ckd-1") as progress:
        for line in lines:
            progress.feed(line)
        task = progress.progress.tasks[0]
        assert (task.completed, task.total) == (2, 3)
        assert task.fields["metrics"] == "accuracy 0.950"
    assert "fedward: run directory /x" in shown.getvalue() and "2/3" in shown.getvalue()


def test_the_sites_app_travels_by_reference_and_imports_nothing_heavy() -> None:
    """Flower sends the sites' app with every message: it must pickle as a reference to an importable class
    (not the runtime's `__main__`) holding only the run config, and importing it must not load torch."""
    config = RunConfig(task="ckd", min_sites=2).to_flower()
    data = pickle.dumps(SiteApp(config))
    assert b"fedward.simulations.local_sites" in data and b"SiteApp" in data
    assert pickle.loads(data).config == config
    probe = (
        "import sys, fedward.simulations.local_sites; "
        "print(sorted({'torch', 'sklearn', 'pandas'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_simulation_interrupted_mid_round_resumes_and_completes(tmp_path: Path) -> None:
    """Ctrl-C during round 2 (a straggling site keeps it open for 3 s), then `fedward sim resume`."""
    run_dir = tmp_path / "cut"
    command = [
        FEDWARD, "sim", "-c", "sim-stragglers=0", "-c", "sim-straggler-seconds=3",
        "ckd", "--sites", "2", "--rounds", "3", "--no-dp", "--name", "cut", "--runs-dir", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while RoundCheckpoint.load(run_dir) is None:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, "round 1 never completed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the whole command, mid-round 2
    proc.wait(timeout=60)
    assert not (run_dir / "summary.json").exists()
    assert RoundCheckpoint.load(run_dir).server_round == 1

    resumed = subprocess.run(
        [FEDWARD, "sim", "resume", str(run_dir)], capture_output=True, text=True, timeout=300
    )

    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    rounds = [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").open()]
    assert rounds == [1, 2, 3]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed-after-round"] == 1 and summary["rounds-completed"] == 3
    assert "round  2/3" in resumed.stdout and "round  1/3" not in resumed.stdout


@pytest.mark.usefixtures("flower_identity")
def test_leave_one_site_out_evaluates_each_site_with_a_model_it_did_not_train(tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    prepare_ckd_sites(sites, 3, "iid")
    config = RunConfig(
        data_root=str(sites),
        runs_dir=str(tmp_path),
        run_name="main",
        num_server_rounds=2,
        min_sites=3,
        dp=False,
    ).to_flower()
    run_server(InProcessGrid(config, 3), config)
    launched: list[tuple[int, str]] = []

    def in_process(values: dict, count: int, run_dir: Path, verbose: bool) -> None:
        launched.append((count, values["data-root"]))
        run_server(InProcessGrid(values, count), values)

    results = leave_one_out(tmp_path / "main", in_process)

    assert [count for count, _ in launched] == [2, 2, 2]
    for k, (_, root) in enumerate(launched):  # federation k holds every site folder but site-k
        used = {p.resolve() for p in Path(root).iterdir()}
        assert (sites / f"site-{k}").resolve() not in used and len(used) == 2
    cross = json.loads((tmp_path / "main" / "cross-site.json").read_text())
    assert set(cross["leave-one-out"]) == {"site-0", "site-1", "site-2"} == set(results)
    for metrics in results.values():
        assert 0.5 < metrics["accuracy"] <= 1 and metrics["num-examples"] > 0
        assert metrics["accuracy-ci-low"] <= metrics["accuracy"] <= metrics["accuracy-ci-high"]
    assert set(cross["global"]) == {"site-0", "site-1", "site-2"}  # the run's own row is kept
