"""ε is composed over every step actually taken, exactly as Opacus' accountant computes it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from site_policy import policy_text
from torch.utils.data import TensorDataset

from fedward.client.budget import SiteBudget, SitePrivacy
from fedward.common.config import RunConfig
from fedward.common.errors import PrivacyError
from fedward.common.models import LogisticRegression
from fedward.common.privacy import (
    DPConfig,
    Mechanism,
    PrivacyHistory,
    compose_epsilon,
    composition_cache_info,
    group_entries,
    resolve_delta,
)
from fedward.common.tasks.base import SiteData
from fedward.common.training import LocalTraining, local_mechanism, train_model


def _data(n: int = 64) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def test_epsilon_grows_per_round_and_equals_the_accountant() -> None:
    dp = DPConfig(noise_multiplier=1.1, accountant="rdp")
    history, epsilons = PrivacyHistory(), []
    model = LogisticRegression(5)
    delta = resolve_delta(0, 64)
    for rnd in range(3):
        out = train_model(
            model,
            _data(),
            torch.nn.functional.cross_entropy,
            local := LocalTraining(epochs=2, batch_size=16, seed=rnd),
            dp,
            mechanism=local_mechanism(dp, 64, local),
        )
        assert out.steps == 8  # 2 epochs x 64/16 batches
        history.extend(out.privacy_steps)
        epsilons.append(history.epsilon(delta, "rdp"))
    assert epsilons[0] < epsilons[1] < epsilons[2]
    assert history.steps == 24
    reference = RDPAccountant()
    for _ in range(24):
        reference.step(noise_multiplier=1.1, sample_rate=0.25)
    assert epsilons[-1] == pytest.approx(reference.get_epsilon(delta), rel=1e-12)


def test_history_survives_a_round_trip_through_flower_state() -> None:
    history = PrivacyHistory([(1.0, 0.1, 10), (2.0, 0.1, 5)])
    again = PrivacyHistory.from_config(history.to_config())
    assert again.entries == history.entries
    reference = PRVAccountant()
    reference.history = list(history.entries)
    # on a domain rounds share (common/prv_composition.py): Opacus' bound, far inside its eps_error 0.01
    assert again.epsilon(1e-3, "prv") == pytest.approx(reference.get_epsilon(1e-3), abs=1e-4)


def test_noise_from_target_epsilon_spends_the_target_over_the_planned_rounds() -> None:
    dp = DPConfig(target_epsilon=2.0, accountant="rdp")
    history, rounds = PrivacyHistory(), 3
    delta = resolve_delta(0, 64)
    for rnd in range(rounds):
        out = train_model(
            LogisticRegression(5),
            _data(),
            torch.nn.functional.cross_entropy,
            local := LocalTraining(batch_size=16, seed=rnd),
            dp,
            mechanism=local_mechanism(dp, 64, local, delta=delta, planned_rounds=rounds),
        )
        history.extend(out.privacy_steps)
    spent = history.epsilon(delta, "rdp")
    assert 1.9 < spent <= 2.0 + 0.01
    assert math.isclose(spent, compose_epsilon(history.entries, delta, "rdp"))


def test_delta_at_or_above_one_over_n_is_refused() -> None:
    assert resolve_delta(0, 80) == pytest.approx(1e-3)  # a power of ten <= 1/(10 n): δ does not give n away
    assert resolve_delta(0, 81) == resolve_delta(0, 99) == resolve_delta(0, 100)
    assert resolve_delta(1e-3, 80) == 1e-3
    with pytest.raises(PrivacyError, match="not below 1/n"):
        resolve_delta(0.05, 80)
    with pytest.raises(PrivacyError, match="not below 1/n"):
        resolve_delta(1 / 80, 80)


def test_dp_config_rejects_nonsense() -> None:
    with pytest.raises(PrivacyError):
        DPConfig(target_epsilon=0, noise_multiplier=0)
    with pytest.raises(PrivacyError):
        DPConfig(accountant="moments")


# a statistics release, then rounds whose σ changed (a resumed run) and came back: equal mechanisms apart
SCATTERED = [(6.0, 1.0, 1), (1.1, 0.25, 8), (2.0, 0.25, 4), (1.1, 0.25, 8), (6.0, 1.0, 1), (1.1, 0.25, 0)]


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # Opacus' PRV at q = 1, harmless
@pytest.mark.parametrize("accountant", [PRVAccountant, RDPAccountant])
def test_grouping_equal_mechanisms_keeps_epsilon_exact(accountant) -> None:
    assert group_entries(SCATTERED) == ((1.1, 0.25, 16), (2.0, 0.25, 4), (6.0, 1.0, 2))
    for delta in (1e-3, 1e-5):
        reference = accountant()
        reference.history = [e for e in SCATTERED if e[2] > 0]  # as Opacus composes them, one by one
        expected = reference.get_epsilon(delta)
        mechanism = accountant.mechanism()
        exact = {"rdp": {"rel": 1e-9}, "prv": {"abs": 1e-4}}[mechanism]  # PRV: common/prv_composition.py
        assert compose_epsilon(SCATTERED, delta, mechanism) == pytest.approx(expected, **exact)
        assert compose_epsilon(SCATTERED[::-1], delta, mechanism) == compose_epsilon(
            SCATTERED, delta, mechanism
        )


def test_a_round_composes_its_history_once(tmp_path) -> None:
    """Reserve (projected lifetime ε), then the run's and the lifetime ε after training: one PRV run."""
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(50.0))
    keys = [f"{i:064x}" for i in range(100)]
    site = SiteData("site-a", None, None, 100, 0, patient_keys=keys)
    config = RunConfig(dp_noise_multiplier=1.234567, dp_accountant="prv", batch_size=16)
    budget = SiteBudget(SitePrivacy(tmp_path / "state", policy), site)
    plan = budget.plan(config, 100)
    before = composition_cache_info()
    assert budget.reserve(config, plan, 100, PrivacyHistory(), "run", 1) is None
    budget.settle(plan.entries)
    history = PrivacyHistory()
    history.extend(plan.entries)
    run = history.epsilon(plan.delta, config.dp_accountant)  # as client/app.py `_account` asks
    lifetime = budget.history(history).epsilon(plan.delta, config.dp_accountant)
    after = composition_cache_info()
    assert after.misses - before.misses == 1 and after.hits - before.hits >= 2
    assert run == lifetime > 0


def test_memoised_step_rdp_gives_opacus_own_values() -> None:
    from opacus.accountants.analysis import rdp

    compose_epsilon([(1.3, 0.2, 5)], 1e-3, "rdp")  # installs the memo
    orders = RDPAccountant.DEFAULT_ALPHAS
    expected = np.array([rdp._compute_rdp(0.2, 1.3, order) for order in orders]) * 17
    for _ in range(2):  # computed, then from the memo
        assert np.array_equal(rdp.compute_rdp(q=0.2, noise_multiplier=1.3, steps=17, orders=orders), expected)


def test_training_runs_the_planned_mechanism_as_given() -> None:
    """σ and q are decided once (plan_mechanism): train_model neither re-resolves σ from the target ε
    nor trains a mechanism whose steps or q differ from its loader's."""
    dp = DPConfig(target_epsilon=2.0, accountant="rdp")  # no σ: only the plan carries one
    local = LocalTraining(epochs=2, batch_size=16)
    planned = Mechanism(2.5, 0.25, 8, 1e-3)
    out = train_model(
        LogisticRegression(5), _data(), torch.nn.functional.cross_entropy, local, dp, mechanism=planned
    )
    assert out.noise_multiplier == 2.5 and out.sample_rate == 0.25
    assert out.privacy_steps == [(2.5, 0.25, 8)]

    model = LogisticRegression(5)
    before = [p.detach().clone() for p in model.parameters()]
    for wrong in (Mechanism(2.5, 0.5, 4, 1e-3), Mechanism(2.5, 0.25, 4, 1e-3), None):  # planned for n = 32
        with pytest.raises(PrivacyError, match="planned mechanism"):
            train_model(model, _data(), torch.nn.functional.cross_entropy, local, dp, mechanism=wrong)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # no step taken
