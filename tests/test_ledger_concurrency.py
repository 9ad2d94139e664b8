"""Two processes training on one data set cannot together pass the site's lifetime cap: the cap check
and the reservation of the round's steps are one ledger transaction."""

from __future__ import annotations

import multiprocessing
from multiprocessing.synchronize import Barrier
from pathlib import Path

POLICY = """[policy]
epsilon-cap = {cap}
delta = 1e-3
clipping-min = 0.1
clipping-max = 5.0
allowed-tasks = ["ckd"]
min-samples = 10
"""
KEYS = [f"{i:064x}" for i in range(100)]


def _config():
    from fedward.common.config import RunConfig

    return RunConfig(dp_noise_multiplier=1.0, dp_accountant="rdp", num_server_rounds=1, batch_size=16)


def _site():
    from fedward.common.tasks.base import SiteData

    return SiteData("site-a", None, None, 100, 0, patient_keys=list(KEYS))


def _train(policy: str, worker: int, barrier: Barrier, results) -> None:
    """Child process: reserve a round, wait until the other one has checked too, then settle it."""
    from fedward.client.budget import SiteBudget, SitePrivacy
    from fedward.common.privacy import PrivacyHistory

    config = _config()
    budget = SiteBudget(SitePrivacy(None, Path(policy)), _site())
    plan = budget.plan(config, 100)
    barrier.wait(timeout=60)  # both are ready: check at the same time
    reason = budget.reserve(config, plan, 100, PrivacyHistory(), f"run-{worker}", 1)
    barrier.wait(timeout=60)  # both have checked before either has trained ("training")
    if reason is None:
        budget.settle(plan.entries)
    results.put((worker, reason))


def test_two_processes_cannot_both_pass_a_cap_that_allows_one_round(tmp_path: Path) -> None:
    from fedward.client.budget import SiteBudget, SitePrivacy
    from fedward.common.privacy import PrivacyHistory, compose_epsilon

    plan = SiteBudget(SitePrivacy(), _site()).plan(_config(), 100)
    one, two = (compose_epsilon(plan.entries * k, 1e-3, "rdp") for k in (1, 2))
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY.format(cap=(one + two) / 2))  # one round fits, two do not

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_train, args=(str(policy), w, barrier, results)) for w in range(2)]
    for p in workers:
        p.start()
    outcomes = dict(results.get(timeout=120) for _ in workers)
    for p in workers:
        p.join(timeout=60)
    assert [p.exitcode for p in workers] == [0, 0]
    refused = [reason for reason in outcomes.values() if reason is not None]
    assert len(refused) == 1 and "cap" in refused[0], outcomes

    budget = SiteBudget(SitePrivacy(None, policy), _site())
    spent = budget.history(PrivacyHistory()).epsilon(1e-3, "rdp")
    assert abs(spent - one) < 1e-9 and spent <= (one + two) / 2
