"""The shared training loop's FedProx and SCAFFOLD terms: exactly SGD on the extended objective without
DP, still effective under Opacus DP-SGD (where a loss term on parameters alone would be dropped)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from fedward.common.privacy import DPConfig
from fedward.common.training import LocalTraining, local_mechanism, train_model

LOCAL = LocalTraining(epochs=2, batch_size=8, lr=0.3, seed=5)


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    return TensorDataset(x, (x[:, 0] + 0.5 * x[:, 1] > 0).long())


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().ravel() for p in model.parameters()])


def _autograd_reference(mu: float, correction: dict[str, torch.Tensor]) -> nn.Module:
    """Plain SGD on cross-entropy + μ/2·||w - w0||² + Σ⟨w, c⟩, the same batches as train_model."""
    model = _model()
    anchor = {k: p.detach().clone() for k, p in model.named_parameters()}
    torch.manual_seed(LOCAL.seed)
    loader = DataLoader(
        _data(),
        batch_size=LOCAL.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(LOCAL.seed),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=LOCAL.lr)
    for _ in range(LOCAL.epochs):
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            for k, p in model.named_parameters():
                loss = loss + mu / 2 * ((p - anchor[k]) ** 2).sum()
                if k in correction:
                    loss = loss + (p * correction[k]).sum()
            loss.backward()
            optimizer.step()
    return model


def test_fedprox_term_changes_the_update_and_equals_sgd_on_the_proximal_objective() -> None:
    start = _flat(_model())
    plain, prox = _model(), _model()
    train_model(plain, _data(), F.cross_entropy, LOCAL, None)
    train_model(prox, _data(), F.cross_entropy, LOCAL, None, proximal_mu=2.0)
    assert not torch.allclose(_flat(plain), _flat(prox))
    assert (_flat(prox) - start).norm() < 0.8 * (_flat(plain) - start).norm()  # pulled towards w_global
    assert torch.allclose(_flat(prox), _flat(_autograd_reference(2.0, {})), atol=1e-5)


def test_scaffold_correction_equals_sgd_on_the_corrected_objective() -> None:
    correction = {"2.bias": torch.tensor([0.5, -0.5]), "0.weight": torch.full((8, 6), 0.05)}
    model = _model()
    train_model(model, _data(), F.cross_entropy, LOCAL, None, correction=correction)
    assert torch.allclose(_flat(model), _flat(_autograd_reference(0.0, correction)), atol=1e-5)


def test_fedprox_term_acts_under_opacus() -> None:
    dp = DPConfig(noise_multiplier=0.5, max_grad_norm=1.0, accountant="rdp")
    start = _flat(_model())
    moved = {}
    for mu in (0.0, 5.0):
        model = _model()
        data = _data()
        mechanism = local_mechanism(dp, len(data), LOCAL)
        out = train_model(model, data, F.cross_entropy, LOCAL, dp, mechanism=mechanism, proximal_mu=mu)
        assert out.noise_multiplier == 0.5 and out.privacy_steps
        moved[mu] = float((_flat(model) - start).norm())
    assert moved[5.0] < 0.6 * moved[0.0]
