"""A site's budget is checked before any training step; the ledger carries it across runs."""

from __future__ import annotations

from pathlib import Path

from fedward.client.budget import SiteBudget, SitePrivacy
from fedward.client.ledger import PrivacyLedger
from fedward.common.config import RunConfig
from fedward.common.privacy import PrivacyHistory
from fedward.common.tasks.base import SiteData

POLICY = """
[policy]
epsilon-cap = {cap}
delta = 1e-3
min-noise-multiplier = 0.5
clipping-min = 0.1
clipping-max = 5.0
allowed-tasks = ["ckd"]
min-samples = 10
"""


def _site(tmp_path: Path, cap: float) -> tuple[SitePrivacy, SiteData]:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY.format(cap=cap))
    keys = [f"{i:064x}" for i in range(100)]
    return SitePrivacy(tmp_path / "state", policy), SiteData("site-a", None, None, 100, 0, patient_keys=keys)


def test_round_over_the_lifetime_cap_is_refused_before_training(tmp_path: Path) -> None:
    settings, site = _site(tmp_path, cap=2.0)
    config = RunConfig(num_server_rounds=5, dp_target_epsilon=3.0, dp_accountant="rdp", batch_size=16)
    budget = SiteBudget(settings, site)
    plan = budget.plan(config, 100)
    assert plan is not None and plan.delta == 1e-3  # the site's δ, not the coordinator's
    assert budget.reserve(config, plan, 100, PrivacyHistory(), "run", 1) is None  # first round fits under 2.0
    budget.settle(plan.entries)
    # an earlier run already spent most of the budget on this data set (the ledger: beside the policy)
    ledger = PrivacyLedger(tmp_path)
    ledger.record(budget.fingerprint, "old-run", 1, plan.entries * 3, 1e-3, "rdp", "ckd")
    rows_before = len(ledger.rows(budget.fingerprint))
    reason = SiteBudget(settings, site).reserve(config, plan, 100, PrivacyHistory(), "run", 2)
    assert reason is not None and "cap" in reason
    assert len(ledger.rows(budget.fingerprint)) == rows_before  # nothing reserved


def test_reservation_counts_until_settled_with_the_steps_taken(tmp_path: Path) -> None:
    settings, site = _site(tmp_path, cap=50.0)
    config = RunConfig(dp_noise_multiplier=1.0, dp_accountant="rdp")
    budget = SiteBudget(settings, site)
    plan = budget.plan(config, 100)
    assert budget.reserve(config, plan, 100, PrivacyHistory(), "run", 1) is None
    reserved = SiteBudget(settings, site).history(PrivacyHistory())  # a crash now: the plan counts
    assert reserved.steps == plan.steps
    budget.settle([(plan.noise_multiplier, plan.sample_rate, 3)])  # stopped early: 3 steps taken
    assert SiteBudget(settings, site).history(PrivacyHistory()).steps == 3
    refused = SiteBudget(settings, site).spend(config, [(0.01, 1.0, 1)], 1e-3, "run", "statistics")
    assert refused is not None and "cap" in refused
    assert SiteBudget(settings, site).spend(config, [(5.0, 1.0, 1)], 1e-3, "run", "statistics") is None
    assert SiteBudget(settings, site).history(PrivacyHistory()).steps == 4


def test_policy_demands_dp_and_enough_noise(tmp_path: Path) -> None:
    settings, site = _site(tmp_path, cap=50.0)
    budget = SiteBudget(settings, site)
    no_dp = RunConfig(dp=False)
    assert "requires differential privacy" in budget.reserve(no_dp, None, 100, PrivacyHistory(), "run", 1)
    weak = RunConfig(dp_noise_multiplier=0.2, dp_accountant="rdp")
    reason = budget.reserve(weak, budget.plan(weak, 100), 100, PrivacyHistory(), "run", 1)
    assert reason is not None and "0.5" in reason


def test_without_policy_nothing_is_refused(tmp_path: Path) -> None:
    budget = SiteBudget(SitePrivacy(), None)
    config = RunConfig(dp_accountant="rdp")
    assert budget.reserve(config, budget.plan(config, 80), 80, PrivacyHistory(), "run", 1) is None
    budget.settle([(1.0, 0.1, 5)])  # no ledger: nothing to settle
    assert budget.cap() == float("inf") and budget.fingerprint is None
