"""The privacy audit: its bound's maths, the canaries in real DP-SGD, and controls on real federations
(tests/support/inprocess_grid.py: the real ServerApp and ClientApp, messages serialised as on the wire).

The controls prove that the audit can see a leak: without DP the coordinator's bound is large; under the
seeded-noise research switch a coordinator who knows the seed gets a bound above the claimed ε; with real
DP (OS-entropy noise) every adversary's bound stays at or below the claimed ε.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flower_fakes import flower_identity  # noqa: F401 (fixture)
from inprocess_grid import InProcessGrid, ckd_run_config, run_server
from torch import nn
from torch.utils.data import TensorDataset

from fedward.common.audit.canaries import CanaryInjection, GradientCanaries, active_canaries, draw_canaries
from fedward.common.audit.membership import attack_metrics
from fedward.common.audit.one_run import audit_bound, epsilon_lower_bound, p_value
from fedward.common.config import RunConfig
from fedward.common.errors import ConfigError
from fedward.common.local_training import LocalTraining
from fedward.common.privacy import DPConfig, Mechanism
from fedward.common.training import train_model
from fedward.server.provenance.manifest import verify_run
from fedward.simulations.audit import analyse, prepare_canaries
from fedward.simulations.prepare import prepare_ckd_sites

SITES = 3


def test_all_correct_guesses_give_the_closed_form_bound() -> None:
    # δ = 0 and r of r right: P[Bin(r, p) >= r] = p^r = α, so ε = logit(α^(1/r))
    for r in (20, 100, 400):
        p = 0.05 ** (1 / r)
        assert epsilon_lower_bound(1000, r, r, 0.0, 0.05) == pytest.approx(math.log(p / (1 - p)), abs=1e-4)


def test_delta_and_chance_level_weaken_the_bound() -> None:
    assert epsilon_lower_bound(1000, 200, 200, 1e-4, 0.05) < epsilon_lower_bound(1000, 200, 200, 0.0, 0.05)
    assert epsilon_lower_bound(1000, 200, 100, 0.0, 0.05) == 0.0  # half right: chance
    assert p_value(1000, 200, 150, 0.5, 0.0) < p_value(1000, 200, 150, 1.0, 0.0)


def test_audit_bound_only_credits_scores_that_follow_the_coins() -> None:
    rng = np.random.default_rng(0)
    coins = rng.random(1000) < 0.5
    assert audit_bound(rng.normal(size=1000), coins, delta=0.0).epsilon < 0.5
    strong = audit_bound(coins * 10.0 + rng.normal(size=1000), coins, delta=0.0)
    assert strong.epsilon > 4 and strong.correct == strong.guesses


def test_membership_metrics_and_unmeasurable_low_fpr() -> None:
    separable = attack_metrics([5.0, 6.0, 7.0], np.arange(200) / 100.0)
    assert separable["auc"] == 1.0 and separable["tpr-at-fpr"]["0.001"] is None  # needs >= 1000 non-members
    assert separable["tpr-at-fpr"]["0.01"] == 1.0
    assert attack_metrics([0.0, 1.0], [0.0, 1.0])["auc"] == 0.5


def test_canaries_are_fresh_distinct_coordinates_and_keep_their_coins_apart(tmp_path: Path) -> None:
    shapes = {"a": (4, 5), "b": (3,)}
    first, second = draw_canaries(shapes, 20), draw_canaries(shapes, 20)
    assert len({(p, int(i)) for p, i in zip(first.parameters, first.indices, strict=True)}) == 20
    same = np.array_equal(first.included, second.included) and np.array_equal(first.signs, second.signs)
    assert not same  # OS entropy, not a seed
    first.save(tmp_path)
    assert GradientCanaries.load(tmp_path, with_coins=False).included is None  # the adversary's view
    assert np.array_equal(GradientCanaries.load(tmp_path, with_coins=True).included, first.included)
    with pytest.raises(ValueError, match="2 to 23"):
        draw_canaries(shapes, 24)


def test_an_included_canary_moves_its_weight_in_real_dp_sgd() -> None:
    """One Opacus DP-SGD step at σ = 0 and q = 1: the canary's clipped gradient (C · sign, over the
    expected batch) is added to the data's at its coordinate, and nowhere else."""
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 3), torch.randint(0, 2, (64,)))
    local = LocalTraining(epochs=1, batch_size=64, lr=1.0)
    dp = DPConfig(max_grad_norm=1.0, accountant="rdp")
    mechanism = Mechanism(noise_multiplier=0.0, sample_rate=1.0, steps=1, delta=1e-5)
    canaries = GradientCanaries(("weight",), np.array([0]), np.array([1.0]), np.array([True]))

    def trained(with_canary: bool) -> torch.Tensor:
        model = nn.Linear(3, 2)
        nn.init.zeros_(model.weight), nn.init.zeros_(model.bias)
        token = active_canaries.set(CanaryInjection(canaries, 1.0) if with_canary else None)
        try:
            train_model(model, data, nn.functional.cross_entropy, local, dp, mechanism=mechanism)
        finally:
            active_canaries.reset(token)
        return model.weight.detach().view(-1).clone()

    moved = trained(True) - trained(False)
    assert float(moved[0]) == pytest.approx(-1.0 / 64, rel=1e-4)  # lr · C / expected batch, against the sign
    assert torch.all(moved[1:] == 0)


def _audit(tmp_path: Path, **keys) -> dict:
    sites, runs = tmp_path / "sites", tmp_path / "runs"
    if not sites.exists():
        prepare_ckd_sites(sites, SITES, "iid")
    audit_dir = tmp_path / f"audit-{len(list(tmp_path.iterdir()))}"
    settings = {"min-sites": SITES, "run-name": audit_dir.name, "audit-dir": str(audit_dir), **keys}
    flower = ckd_run_config(sites, runs, **settings)
    config = RunConfig.from_flower(flower)
    prepare_canaries(config, audit_dir, 800)
    run_server(InProcessGrid(flower, SITES), flower)
    return analyse(runs / audit_dir.name, audit_dir, config, SITES)


@pytest.mark.usefixtures("flower_identity")
def test_audit_controls_see_the_leaks_and_dp_holds(tmp_path: Path) -> None:
    open_run = _audit(tmp_path, **{"dp": False, "num-server-rounds": 5})
    assert open_run["adversaries"]["coordinator"]["epsilon-lower-bound"] >= 2  # seen 2.9–3.6; 10 rounds: 4.5
    assert open_run["claimed"]["epsilon"] is None and not open_run["leak"]

    seeded = _audit(tmp_path, **{"dp-seeded-noise": True, "dp-target-epsilon": 1.0, "num-server-rounds": 4})
    knowing = seeded["adversaries"]["coordinator-knowing-seed"]["epsilon-lower-bound"]
    assert seeded["claimed"]["epsilon"] == pytest.approx(1.0, abs=0.05)
    assert knowing >= 1.5 and seeded["leak"]  # seen 2.2–2.7: the replayed noise is no noise
    assert seeded["adversaries"]["coordinator"]["epsilon-lower-bound"] <= 1.0  # without the seed: bounded

    private = _audit(tmp_path, **{"dp-target-epsilon": 1.0, "num-server-rounds": 4})
    assert "coordinator-knowing-seed" not in private["adversaries"]
    assert not private["leak"]
    for entry in private["adversaries"].values():
        assert entry["epsilon-lower-bound"] <= private["claimed"]["epsilon"]
    mia = private["membership-inference"]
    assert mia["members"] > 0 and mia["non-members"] > 0 and 0.0 <= mia["auc"] <= 1.0
    run = tmp_path / "runs" / private["run"]
    assert json.loads((run / "summary.json").read_text())["empirical-privacy"] == private
    assert verify_run(run).ok  # signed again with the audit in the summary


def test_an_audit_with_secure_aggregation_is_refused() -> None:
    # the audit's coordinator scores each site's own update, which secure aggregation hides
    with pytest.raises(ConfigError, match="audit-dir"):
        RunConfig(secure_aggregation=True, audit_dir="/tmp/audit")


def test_without_dp_an_included_canary_is_in_exactly_one_batch_per_epoch() -> None:
    canaries = GradientCanaries(("w",), np.array([0]), np.array([1.0]), np.array([True]))
    injection = CanaryInjection(canaries, 1.0)
    for _ in range(20):  # epochs
        grads = {"w": torch.zeros(4)}
        for batch in range(5):
            injection.shuffled_step(grads, batch, 5, scale=0.5)
        assert float(grads["w"][0]) == 0.5  # once, as one example of the batch's mean
    excluded = CanaryInjection(
        GradientCanaries(("w",), np.array([0]), np.array([1.0]), np.array([False])), 1.0
    )
    grads = {"w": torch.zeros(4)}
    for batch in range(5):
        excluded.shuffled_step(grads, batch, 5)
    assert float(grads["w"][0]) == 0.0
