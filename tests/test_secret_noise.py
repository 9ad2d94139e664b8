"""The coordinator cannot replay a site's DP noise: it comes from OS entropy, not from the run config.

The attacker knows everything the coordinator knows: the run config (and so every seed derived from it),
the global model it sent, the site's training-set size and the update the site sent back. It replays the
round on data of its own with the seed the config implies, estimates the noise from the replay, subtracts
it from the site's update and so recovers the site's sum of clipped per-patient gradients. Against the
simulation-only seeded switch the attack must succeed (error ~1e-6); against the default it must fail.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from fedward.common.config import RunConfig
from fedward.common.models import build_tabular_model
from fedward.common.privacy import DPConfig
from fedward.common.training import LocalTraining, local_mechanism, train_model

N, FEATURES, LR, SIGMA, CLIP = 32, 24, 1.0, 1.0, 1.0


def _model() -> torch.nn.Module:
    torch.manual_seed(7)  # the global model the coordinator sent: public
    return build_tabular_model("mlp", FEATURES, 2)


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().ravel() for p in model.parameters()])


def _data(seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(N, FEATURES, generator=g), torch.randint(0, 2, (N,), generator=g))


def _noisy_sum(dataset: TensorDataset, local: LocalTraining, sigma: float) -> torch.Tensor:
    """One full-batch DP-SGD step (q = 1): returns sum of clipped gradients + noise, read off the update."""
    model = _model()
    start = _flat(model)
    dp = DPConfig(noise_multiplier=sigma, max_grad_norm=CLIP)
    train_model(
        model, dataset, F.cross_entropy, local, dp, mechanism=local_mechanism(dp, N, local, delta=1e-5)
    )
    return (start - _flat(model)) * N / LR  # Opacus divides by the expected batch size q·n = n


@pytest.mark.parametrize("seeded", [True, False], ids=["seeded-switch", "default"])
def test_replaying_the_round_recovers_the_clipped_gradients_only_with_the_seeded_switch(seeded: bool) -> None:
    config = RunConfig(dp_seeded_noise=seeded, batch_size=N, lr=LR, local_epochs=1)
    site_local = config.local_training(server_round=3, site_index=1)
    patients = _data(seed=1)
    sent = _noisy_sum(patients, site_local, SIGMA)  # what the coordinator receives

    # The attacker: the seed the config implies, the old behaviour of seeding from it, its own data.
    attacker_local = RunConfig(dp_seeded_noise=True, batch_size=N, lr=LR).local_training(3, 1)
    own = _data(seed=2)
    noise_estimate = _noisy_sum(own, attacker_local, SIGMA) - _noisy_sum(own, attacker_local, 1e-12)
    recovered = sent - noise_estimate

    truth = _noisy_sum(patients, attacker_local, 1e-12)  # the site's clipped gradient sum (test oracle)
    noise_norm = float((sent - truth).norm())
    error = float((recovered - truth).norm())
    assert noise_norm > 0.5 * SIGMA * CLIP * len(truth) ** 0.5  # the site did add full-size noise
    if seeded:
        assert error < 1e-3 * noise_norm  # replayed noise cancels: the clipped sum comes out
    else:
        assert error > 0.5 * noise_norm  # the estimate is independent noise: nothing cancels


def test_two_private_trainings_with_one_config_draw_different_noise() -> None:
    local = RunConfig(batch_size=N, lr=LR).local_training(1, 0)
    first, second = (_noisy_sum(_data(seed=1), local, SIGMA) for _ in range(2))
    assert not torch.allclose(first, second)


def test_training_without_dp_stays_reproducible_from_the_run_seed() -> None:
    local = RunConfig(batch_size=8, lr=LR, dp=False).local_training(1, 0)
    runs = []
    for _ in range(2):
        model = _model()
        train_model(model, _data(seed=1), F.cross_entropy, local, None)
        runs.append(_flat(model))
    assert torch.equal(runs[0], runs[1])
