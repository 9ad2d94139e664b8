"""The federated statistics are a DP release: charged to the run and the ledger once per data set, kept
and re-sent at no new cost, inside the run's target ε; the seeded research switch stays in simulation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flower_fakes import flower_identity  # noqa: F401 (fixture)
from flwr.app import Context, RecordDict
from inprocess_grid import InProcessGrid, ckd_run_config, run_server
from site_policy import policy_text

from fedward.client.budget import SiteBudget, SitePrivacy
from fedward.client.ledger import PrivacyLedger
from fedward.client.site import seeded_noise_refusal
from fedward.common.config import RunConfig
from fedward.common.dp_release import release_entry
from fedward.common.tasks import get_task
from fedward.simulations.prepare import prepare_ckd_sites
from fedward.strategies.reply_checks import largest_sigma

pytestmark = pytest.mark.usefixtures("flower_identity")
SITES = 2
TARGET = 3.0


def _run(sites: Path, runs: Path, name: str) -> tuple[InProcessGrid, dict]:
    config = ckd_run_config(
        sites,
        runs,
        **{"num-server-rounds": 2, "min-sites": SITES, "dp-target-epsilon": TARGET, "run-name": name},
    )
    grid = InProcessGrid(config, SITES)
    run_server(grid, config)
    return grid, json.loads((runs / name / "summary.json").read_text())


def _releases(grid: InProcessGrid) -> dict[int, dict]:
    return {
        r.metadata.src_node_id: dict(r.content["statistics"])
        for r in grid.replies
        if r.metadata.message_type == "query.statistics"
    }


def test_statistics_are_paid_once_per_data_set_and_inside_the_run_target(tmp_path: Path) -> None:
    sites, runs = tmp_path / "sites", tmp_path / "runs"
    prepare_ckd_sites(sites, SITES, "iid")

    first, summary = _run(sites, runs, "first")
    drawn = _releases(first)
    assert all(r["drawn-now"] == 1 and r["noise-multiplier"] == 6.0 for r in drawn.values())  # CKD's own σ
    for site in summary["sites"].values():
        assert site["statistics-drawn-now"] is True and 0 < site["statistics-epsilon"] < 1
        assert site["epsilon"] <= TARGET + 0.02  # statistics and training together within the target
    ledger = PrivacyLedger(sites / "site-0" / "state")
    (dataset,) = ledger.datasets()
    releases = [r for r in ledger.rows(dataset.fingerprint) if r.sample_rate == 1.0 and r.steps == 1]
    assert len(releases) == 1  # the statistics release, in the lifetime ledger beside the steps

    second, summary = _run(sites, runs, "second")
    kept = _releases(second)
    for node, release in kept.items():  # the same noisy answer, not a fresh draw to average away
        assert release["drawn-now"] == 0 and release["sums"] == drawn[node]["sums"]
    assert all(site["statistics-drawn-now"] is False for site in summary["sites"].values())
    again = [r for r in ledger.rows(dataset.fingerprint) if r.sample_rate == 1.0 and r.steps == 1]
    assert len(again) == 1  # no new cost
    assert np.all(np.isfinite([site["epsilon-lifetime"] for site in summary["sites"].values()]))


def _context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=2, node_config=node_config, state=RecordDict(), run_config={})


def test_the_seeded_switch_is_refused_by_sites_with_their_own_data_or_policy(tmp_path: Path) -> None:
    seeded = RunConfig(dp_seeded_noise=True)
    simulated = _context({"partition-id": 0})
    assert seeded_noise_refusal(simulated, seeded, SitePrivacy()) is None
    assert seeded_noise_refusal(simulated, RunConfig(), SitePrivacy()) is None
    hospital = _context({"data-dir": str(tmp_path)})
    assert "simulation-only" in seeded_noise_refusal(hospital, seeded, SitePrivacy())
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(3.0))
    assert "simulation-only" in seeded_noise_refusal(simulated, seeded, SitePrivacy(policy_file=policy))


def test_a_site_refusing_the_statistics_release_is_left_out_and_the_others_run(tmp_path: Path) -> None:
    sites, runs = tmp_path / "sites", tmp_path / "runs"
    prepare_ckd_sites(sites, 3, "iid")
    (sites / "site-2" / "policy.toml").write_text(policy_text(0.05))  # below the release's own ε
    settings = {"num-server-rounds": 1, "min-sites": 2, "run-name": "x"}
    config = ckd_run_config(sites, runs, **settings)
    run_server(InProcessGrid(config, 3), config)
    summary = json.loads((runs / "x" / "summary.json").read_text())
    assert summary["rounds-completed"] == 1 and sorted(summary["sites"]) == ["site-0", "site-1"]
    (failure,) = json.loads((runs / "x" / "config.json").read_text())["statistics-failures"]
    assert "site-2 refused" in failure and "cap" in failure


@pytest.mark.parametrize(("task", "own"), [("ckd", 6.0), ("tumour", 15.0), ("tumour-seg", 15.0)])
def test_the_release_sigma_is_the_tasks_own_unless_the_run_sets_one(task: str, own: float) -> None:
    """CKD's sums standardise every site's inputs; an MRI site releases only its patient count (its FedAvg
    weight), which a larger σ keeps useful at a third of the ε (BENCHMARKS.md)."""
    assert get_task(task).statistics_sigma(RunConfig(task=task)) == own
    assert get_task(task).statistics_sigma(RunConfig(task=task, dp_statistics_noise_multiplier=9.0)) == 9.0


@pytest.mark.parametrize("release_sigma", [6.0, 15.0])
def test_the_servers_dp_bound_assumes_the_sites_own_release(release_sigma: float) -> None:
    """The server bounds a site's update with the σ the site plans after paying for the release it sent
    (its reported noise multiplier), not with a σ the run config alone implies."""
    config = RunConfig(task="tumour", num_server_rounds=5, batch_size=16, dp_target_epsilon=1.0)
    n = 64
    plan = SiteBudget(SitePrivacy(), None).plan(config, n, spent=(release_entry(release_sigma),))
    assert plan is not None
    assert largest_sigma(config, n, n, release_sigma, margin=1.0) == pytest.approx(plan.noise_multiplier)
