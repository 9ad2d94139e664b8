"""A site's budget is checked before any training step; the ledger carries it across runs."""

from __future__ import annotations

from pathlib import Path

from client.budget import SiteBudget, SitePrivacy
from client.ledger import PrivacyLedger, dataset_fingerprint
from common.config import RunConfig
from common.privacy import PrivacyHistory

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


def _site(tmp_path: Path, cap: float) -> tuple[SitePrivacy, list[Path]]:
    data = tmp_path / "train.csv"
    data.write_text("age\n1\n")
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY.format(cap=cap))
    return SitePrivacy(tmp_path / "state", policy), [data]


def test_round_over_the_lifetime_cap_is_refused_before_training(tmp_path: Path) -> None:
    settings, files = _site(tmp_path, cap=2.0)
    config = RunConfig(num_server_rounds=5, dp_target_epsilon=3.0, dp_accountant="rdp", batch_size=16)
    budget = SiteBudget(settings, files)
    plan = budget.plan(config, 100)
    assert plan is not None and plan.delta == 1e-3  # the site's δ, not the coordinator's
    assert budget.refusal(config, plan, 100, PrivacyHistory()) is None  # first round fits under 2.0
    # an earlier run already spent most of the budget on this data set
    ledger = PrivacyLedger(tmp_path / "state")
    ledger.record(dataset_fingerprint(files), "old-run", 1, plan.entries * 4, 1e-3, "rdp", "ckd")
    rows_before = len(ledger.rows(dataset_fingerprint(files)))
    reason = SiteBudget(settings, files).refusal(config, plan, 100, PrivacyHistory())
    assert reason is not None and "cap" in reason
    assert len(ledger.rows(dataset_fingerprint(files))) == rows_before  # nothing recorded


def test_policy_demands_dp_and_enough_noise(tmp_path: Path) -> None:
    settings, files = _site(tmp_path, cap=50.0)
    budget = SiteBudget(settings, files)
    no_dp = RunConfig(dp=False)
    assert "requires differential privacy" in budget.refusal(no_dp, None, 100, PrivacyHistory())
    weak = RunConfig(dp_noise_multiplier=0.2, dp_accountant="rdp")
    reason = budget.refusal(weak, budget.plan(weak, 100), 100, PrivacyHistory())
    assert reason is not None and "0.5" in reason


def test_without_policy_nothing_is_refused(tmp_path: Path) -> None:
    budget = SiteBudget(SitePrivacy(), [])
    config = RunConfig(dp_accountant="rdp")
    assert budget.refusal(config, budget.plan(config, 80), 80, PrivacyHistory()) is None
    assert budget.cap() == float("inf")
