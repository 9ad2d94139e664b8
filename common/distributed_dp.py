"""Distributed DP on top of secure aggregation: each site adds a share of the noise, the sum carries it all.

The distributed discrete Gaussian mechanism (Kairouz, Liu & Steinke, ICML 2021, arXiv 2102.06387) as
DP-FedSGD at patient level. Every round, each site:

1. computes the sum of its patients' per-sample gradients at the global model, each clipped to C
   (Opacus' per-sample gradients and clipping; full batch: every patient, every round);
2. scales it to integer units of the granularity γ = C / 2^(bits − 10) and rounds each coordinate at
   random, up or down, unbiased (OS entropy);
3. adds discrete Gaussian noise N_Z(0, σ_share²) per coordinate (OpenDP's exact sampler, OS entropy);
4. sends the integer vector into secure aggregation, which gives the coordinator only the sum.

One patient changes a site's rounded vector by at most Δ = C/γ + √d in L2 (d weights; rounding moves
each coordinate by less than 1). The coordinator sees the sum of at least t sites' vectors (t: the
round's secure-aggregation threshold, or more by the site's policy), which carries t independent
discrete Gaussians: by Kairouz et al.'s Theorem 1 that is ε_z-concentrated DP with
ε_z = min(√(Δ²/(tσ²) + 2τd), Δ/(√t σ) + τ√d), τ = 10 Σ_{k=1}^{t−1} exp(−2π²σ² k/(k+1)). A ρ-zCDP
mechanism has the Rényi curve α·ρ of a Gaussian mechanism with noise multiplier 1/ε_z, so each round is
booked as one step (σ_eq = 1/ε_z, q = 1) and the RDP accountant (required) composes it with everything
else the site released: ledger, caps and reports stay exact. σ_eq is calibrated once for the run's
target ε like any σ (common/privacy.py); each site then adds σ_share = σ_eq·Δ/√t, i.e. √t less noise
than local DP needs for the same ε against the coordinator.

The guarantee is against a coordinator who does not collude with sites: whoever also learns the other
sites' noise faces a site's own share only (ε at σ_eq/√t).
"""

from __future__ import annotations

import math
import secrets
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fedward.common.errors import ConfigError, PrivacyError

if TYPE_CHECKING:
    from fedward.common.config import RunConfig

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm")  # a mean gradient step
RING_HALF = 2**31  # secure aggregation's ring is Z_2^32: a sum must stay within ±2^31
SITES_KEY = "distributed-dp-sites"  # in a round's config, set by the secure-aggregation mod: the sum's t


def granularity(max_grad_norm: float, bits: int) -> float:
    """γ: the value of one integer unit, C / 2^(bits − 10) (2^12 units per clipping norm at bits = 22)."""
    return max_grad_norm / 2 ** (bits - 10)


def sensitivity(max_grad_norm: float, gamma: float, num_weights: int) -> float:
    """Δ: the L2 change one patient makes to a site's randomly rounded vector, C/γ + √d."""
    return max_grad_norm / gamma + math.sqrt(num_weights)


def sum_epsilon_z(delta_l2: float, sigma: float, sites: int, num_weights: int) -> float:
    """ε_z of the concentrated-DP bound for the sum of `sites` discrete Gaussians N_Z(0, σ²) per
    coordinate at L2 sensitivity Δ (Kairouz, Liu & Steinke 2021, Theorem 1)."""
    tau = 10 * sum(math.exp(-2 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, sites))
    return min(
        math.sqrt(delta_l2**2 / (sites * sigma**2) + 2 * tau * num_weights),
        delta_l2 / (math.sqrt(sites) * sigma) + tau * math.sqrt(num_weights),
    )


def share_noise(sigma_eq: float, delta_l2: float, sites: int, num_weights: int) -> float:
    """σ_share each of `sites` sites adds so that their sum is at least as private as one Gaussian step at
    noise multiplier `sigma_eq`: ε_z(σ_share) ≤ 1/σ_eq."""
    if sites < 2:
        raise PrivacyError(f"distributed DP needs at least 2 sites in every sum, got {sites}")
    sigma = sigma_eq * delta_l2 / math.sqrt(sites)
    while sum_epsilon_z(delta_l2, sigma, sites, num_weights) > 1.0 / sigma_eq:  # τ: only for σ of ~1 unit
        sigma *= 1.01
    return sigma


def clipped_gradient_sum(
    model: nn.Module, dataset: Dataset, loss_fn, max_grad_norm: float, device: torch.device | str = "cpu"
) -> dict[str, np.ndarray]:
    """Σ over every record of its gradient at the model's weights, clipped to `max_grad_norm` (Opacus'
    per-sample gradients and clipping, no noise); parameter name → float64 array."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    model.to(device).train()
    wrapped = GradSampleModule(model, loss_reduction="sum")
    optimizer = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0), noise_multiplier=0.0, max_grad_norm=max_grad_norm,
        expected_batch_size=1, loss_reduction="sum",
    )  # fmt: skip
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    for xb, yb in DataLoader(dataset, batch_size=256):
        loss = loss_fn(wrapped(xb.to(device)), yb.to(device)) * len(yb)  # the sum of per-record losses
        loss.backward()
        optimizer.clip_and_accumulate()  # each record's gradient clipped to C, added to summed_grad
        for p in model.parameters():
            p.grad_sample = None
    params = dict(model.named_parameters())
    total = {name: params[name].summed_grad.detach().double().cpu().numpy() for name in names}
    wrapped._close()
    return total


def noisy_integer_sum(
    gradient_sum: dict[str, np.ndarray], gamma: float, sigma_share: float, max_sites: int
) -> dict[str, np.ndarray]:
    """The site's share: the gradient sum in units of γ, rounded at random (unbiased), plus discrete
    Gaussian noise of σ_share units per coordinate; integer-valued float64 arrays, names as given."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    names = list(gradient_sum)
    flat = np.concatenate([gradient_sum[n].ravel() for n in names]) / gamma
    rng = np.random.default_rng(secrets.randbits(128))
    floor = np.floor(flat)
    rounded = (floor + (rng.random(flat.size) < flat - floor)).astype(np.int64)
    space = dp.vector_domain(dp.atom_domain(T=int), size=int(flat.size)), dp.l2_distance(T=int)
    noisy = np.asarray(dp.m.make_gaussian(*space, scale=float(sigma_share))(rounded.tolist()), dtype=np.int64)
    if np.abs(noisy).max(initial=0) * max_sites >= RING_HALF:
        raise PrivacyError(
            "distributed DP: the site's noisy gradient sum does not fit secure aggregation's ring; "
            "lower secure-aggregation-bits"
        )
    out, start = {}, 0
    for name in names:
        size = gradient_sum[name].size
        out[name] = noisy[start : start + size].astype(np.float64).reshape(gradient_sum[name].shape)
        start += size
    return out


def check_config(config: RunConfig) -> None:
    """ConfigError, naming the key, for a run distributed DP cannot serve."""
    if not config.distributed_dp:
        return
    problems = {
        "secure-aggregation = true": config.secure_aggregation,
        "dp = true": config.dp,
        'dp-accountant = "rdp" (a round is booked by its concentrated-DP bound)': config.dp_accountant
        == "rdp",
        f"strategy one of {', '.join(STRATEGIES)} (a mean gradient step)": config.strategy in STRATEGIES,
        "central-dp = false": not config.central_dp,
    }
    missing = [need for need, met in problems.items() if not met]
    if missing:
        raise ConfigError(f"distributed-dp = true needs {'; '.join(missing)}")
