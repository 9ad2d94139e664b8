"""A real Flower federation of 3 simulated hospitals, launched the way a researcher does; the run ends as
soon as its results are written (simulations/local_runtime.py:end_now), leaving no process, losing nothing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fedward.client.ledger import PrivacyLedger

pytestmark = pytest.mark.slow

FEDWARD = str(Path(sys.executable).parent / "fedward")


def _sim(tmp_path: Path, name: str, *args: str, mark: str = "") -> tuple[dict, list[dict], str]:
    result = subprocess.run(
        [FEDWARD, "sim", "ckd", "--sites", "3", "--name", name, "--runs-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "FEDWARD_DEVICE": "cpu", "FEDWARD_TEST_TREE": mark},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / name
    summary = json.loads((run / "summary.json").read_text())
    rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return summary, rounds, result.stdout


def test_federation_without_dp_matches_the_pooled_level(tmp_path: Path) -> None:
    summary, rounds, stdout = _sim(tmp_path, "nodp", "--rounds", "5", "--no-dp")
    assert summary["overall"]["accuracy"] >= 0.95
    assert summary["rounds-completed"] == 5 and len(rounds) == 5
    assert set(summary["sites"]) == {"site-0", "site-1", "site-2"}
    assert sum(s["evaluate"]["num-examples"] for s in summary["sites"].values()) == 81  # 20 % held out
    assert "round  5/5" in stdout and "overall" in stdout  # progress lines and final table
    config = json.loads((tmp_path / "nodp" / "config.json").read_text())
    assert config["run-config"]["dp"] is False


def _marked(mark: str) -> list[psutil.Process]:
    """Processes (any depth under the command, Ray's included) whose environment carries `mark`."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("FEDWARD_TEST_TREE") == mark:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_federation_with_dp_reports_finite_epsilon_per_site(tmp_path: Path) -> None:
    mark = f"{os.getpid()}-{time.time_ns()}"
    summary, rounds, _ = _sim(tmp_path, "dp", "--rounds", "3", "--epsilon", "3", mark=mark)
    for site in summary["sites"].values():
        assert 0 < site["epsilon"] <= 3.0 + 0.05
        assert site["privacy-steps"] > 0
        assert site["delta"] <= 1 / site["data"]["num-train"]
    eps = [max(r["epsilon"].values()) for r in rounds]
    assert eps == sorted(eps) and eps[0] < eps[-1]  # ε composes over rounds
    assert math.isfinite(summary["overall"]["roc-auc"])

    # The runtime ended itself and Ray once the results were written: nothing of the run is left running,
    # and nothing it wrote is missing (each site's ledger holds every release and round, no open reservation).
    deadline = time.monotonic() + 10
    while _marked(mark) and time.monotonic() < deadline:  # a killed process may take a moment to vanish
        time.sleep(0.2)
    assert [p.name() for p in _marked(mark)] == []
    run_dir = tmp_path / "dp"
    assert summary["rounds-completed"] == 3 and summary["stopped"] is None
    assert {"model.safetensors", "provenance.json", "provenance.sig", "cross-site.json"} <= {
        p.name for p in run_dir.iterdir()
    }
    for site in summary["sites"]:
        ledger = PrivacyLedger(run_dir / "sites" / site / "state")
        (dataset,) = ledger.datasets()
        rows = ledger.rows(dataset.fingerprint)
        assert sorted((row.server_round, row.label) for row in rows) == [
            (0, "statistics"), (1, "train"), (2, "train"), (3, "train"),
        ]  # fmt: skip
        assert {row.kind for row in rows} == {"spend"}  # no reservation left open
        assert ledger.verify() is None
