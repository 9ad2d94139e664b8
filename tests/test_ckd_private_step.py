"""CKD's private step runs on PyTorch's expanded weights (`CkdTask.grad_sample_mode`): the per-sample
gradients Opacus clips must be those of its per-layer hooks, for every CKD model, and an empty Poisson
batch (a noise-only step) must still train and count."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule
from opacus.grad_sample.gsm_exp_weights import GradSampleModuleExpandedWeights
from torch.utils.data import TensorDataset

from fedward.common.config import RunConfig
from fedward.common.local_training import LocalTraining
from fedward.common.privacy import DPConfig, Mechanism
from fedward.common.tasks import get_task
from fedward.common.training import train_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Opacus' secure-mode advice


@pytest.mark.parametrize("model", ["logreg", "mlp"])
def test_per_sample_gradients_are_the_hooks(model: str) -> None:
    task = get_task("ckd")
    assert task.grad_sample_mode == "ew"
    config = RunConfig(model=model)
    x, y = torch.randn(11, 24), torch.randint(0, 2, (11,))
    per_sample = []
    for wrap in (GradSampleModule, GradSampleModuleExpandedWeights):
        torch.manual_seed(0)
        module = wrap(task.build_model(config))
        task.loss(module(x), y).backward()
        per_sample.append([p.grad_sample.clone() for p in module.parameters()])
    hooks, expanded = per_sample
    assert [g.shape[0] for g in expanded] == [11] * len(expanded)
    for a, b in zip(hooks, expanded, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_an_empty_poisson_batch_is_a_counted_noise_step() -> None:
    task = get_task("ckd")
    model = task.build_model(RunConfig(model="mlp"))
    before = [p.detach().clone() for p in model.parameters()]
    steps = 40  # q = 1/40 over 40 patients: about a third of the batches are empty
    data = TensorDataset(torch.randn(steps, 24), torch.randint(0, 2, (steps,)))
    outcome = train_model(
        model,
        data,
        task.loss,
        LocalTraining(epochs=1, batch_size=1, lr=0.1),
        DPConfig(noise_multiplier=1.0, delta=1e-3),
        mechanism=Mechanism(1.0, 1 / steps, steps, 1e-3),
        grad_sample_mode=task.grad_sample_mode,
    )
    assert outcome.steps == steps and outcome.privacy_steps == [(1.0, 1 / steps, steps)]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
