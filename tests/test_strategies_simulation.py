"""A real federation with SCAFFOLD (control variates over the wire, site state in the real runtime)
and one hostile site whose 1000x update the server rejects every round while the others train on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedward.common.config import RunConfig
from fedward.simulations.prepare import prepare_ckd_sites
from fedward.simulations.runner import run_simulation

pytestmark = pytest.mark.slow


def test_scaffold_federation_rejects_a_hostile_site(tmp_path: Path) -> None:
    prepare_ckd_sites(tmp_path / "sites", 3, "iid", seed=0)
    config = RunConfig(
        num_server_rounds=2,
        min_sites=3,
        dp=False,
        strategy="scaffold",
        hostile_sites="1",
        hostile_mode="scale",
        hostile_scale=1000.0,
        data_root=str(tmp_path / "sites"),
        runs_dir=str(tmp_path / "runs"),
        run_name="scaffold",
        device="cpu",
    )
    log = tmp_path / "scaffold.log"
    run_simulation(config.to_flower(), 3, log_file=log)
    run = tmp_path / "runs" / "scaffold"
    summary = json.loads((run / "summary.json").read_text())
    rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert summary["strategy"] == "scaffold" and summary["rounds-completed"] == 2
    assert [r["rejected-updates"] for r in rounds] == [1, 1]
    assert "x round median" in rounds[0]["rejected"]["site-1"]  # round 1: the relative check (3 sites)
    assert all("update norm" in r["rejected"]["site-1"] for r in rounds)  # round 2: absolute bound
    assert summary["sites"]["site-1"]["updates-rejected"] == 2
    assert summary["sites"]["site-0"]["updates-rejected"] == 0
    assert summary["overall"]["accuracy"] >= 0.9
    text = log.read_text()
    assert "SIMULATED HOSTILE SITE site-1" in text and "update of site-1 rejected in round 2" in text
