"""The one local training and evaluation loop, with or without Opacus DP-SGD."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, Dataset

from common.privacy import DPConfig, resolve_noise_multiplier

# Opacus' per-sample hooks fire on inputs that need no gradient; harmless and noisy.
warnings.filterwarnings("ignore", message="Full backward hook is firing")


@dataclass(frozen=True)
class LocalTraining:
    """Local optimisation settings for one round at one site."""

    epochs: int = 1
    batch_size: int = 16
    lr: float = 0.1
    seed: int = 0


@dataclass
class TrainOutcome:
    """What one round of local training did."""

    loss: float
    num_examples: int
    steps: int
    noise_multiplier: float = 0.0
    sample_rate: float = 0.0
    privacy_steps: list[tuple[float, float, int]] = field(default_factory=list)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Optimiser steps in one epoch (Opacus' Poisson sampler takes the same number)."""
    return max(1, math.ceil(num_examples / batch_size))


def train_model(
    model: nn.Module,
    dataset: Dataset,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    local: LocalTraining,
    dp: DPConfig | None,
    *,
    delta: float = 0.0,
    planned_rounds: int = 1,
    device: torch.device | str = "cpu",
) -> TrainOutcome:
    """Train `model` in place on `dataset` for `local.epochs` epochs.

    With `dp` enabled, Opacus DP-SGD with Poisson sampling: σ is `dp.noise_multiplier`, or derived
    from `dp.target_epsilon` at `delta` over `planned_rounds` rounds of this size. The returned
    `privacy_steps` is the accountant's history of the steps really taken.
    """
    torch.manual_seed(local.seed)
    generator = torch.Generator().manual_seed(local.seed)
    n = len(dataset)
    loader = DataLoader(dataset, batch_size=local.batch_size, shuffle=True, generator=generator)
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=local.lr)
    sigma, q = 0.0, 0.0
    engine = None
    train_module = model
    if dp is not None and dp.enabled:
        q = 1.0 / len(loader)
        planned = planned_rounds * local.epochs * len(loader)
        sigma = resolve_noise_multiplier(dp, delta=delta, sample_rate=q, planned_steps=planned)
        with warnings.catch_warnings():  # secure_mode advice; see docs/privacy.md
            warnings.simplefilter("ignore")
            engine = PrivacyEngine(accountant=dp.accountant)
            train_module, optimizer, loader = engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=sigma,
                max_grad_norm=dp.max_grad_norm,
                poisson_sampling=True,
            )
    losses: list[float] = []
    steps = 0
    for _ in range(local.epochs):
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad()
            loss = loss_fn(train_module(xb), yb)
            loss.backward()
            optimizer.step()
            if len(yb):  # Poisson sampling may draw an empty batch: a noise-only step
                losses.append(float(loss.detach()))
            steps += 1
    history: list[tuple[float, float, int]] = []
    if engine is not None:
        history = [(float(s), float(r), int(k)) for s, r, k in engine.accountant.history]
        train_module.remove_hooks()
    return TrainOutcome(
        loss=float(np.mean(losses)) if losses else math.nan,
        num_examples=n,
        steps=steps,
        noise_multiplier=sigma,
        sample_rate=q,
        privacy_steps=history,
    )


@torch.no_grad()
def predict_proba(
    model: nn.Module, dataset: Dataset, device: torch.device | str = "cpu", batch_size: int = 256
):
    """Class probabilities (n, k) and labels (n,) of `dataset`."""
    model.to(device).eval()
    probs, labels = [], []
    for xb, yb in DataLoader(dataset, batch_size=batch_size):
        probs.append(torch.softmax(model(xb.to(device)), dim=1).cpu())
        labels.append(yb)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()
