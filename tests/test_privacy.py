"""ε is composed over every step actually taken, exactly as Opacus' accountant computes it."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from torch.utils.data import TensorDataset

from common.errors import PrivacyError
from common.models import LogisticRegression
from common.privacy import DPConfig, PrivacyHistory, compose_epsilon, resolve_delta
from common.training import LocalTraining, train_model


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
            LocalTraining(epochs=2, batch_size=16, seed=rnd),
            dp,
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
    assert again.epsilon(1e-3, "prv") == pytest.approx(reference.get_epsilon(1e-3), rel=1e-9)


def test_noise_from_target_epsilon_spends_the_target_over_the_planned_rounds() -> None:
    dp = DPConfig(target_epsilon=2.0, accountant="rdp")
    history, rounds = PrivacyHistory(), 3
    delta = resolve_delta(0, 64)
    for rnd in range(rounds):
        out = train_model(
            LogisticRegression(5),
            _data(),
            torch.nn.functional.cross_entropy,
            LocalTraining(batch_size=16, seed=rnd),
            dp,
            delta=delta,
            planned_rounds=rounds,
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
