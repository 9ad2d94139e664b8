"""A site's round under distributed DP (common/distributed_dp.py): whether it takes part, and its share.

The site takes part only inside secure aggregation, when the round's sum is guaranteed to hold at least
t sites' noise (the mod tells the handler t: the protocol's threshold, or the site's secure-aggregation
minimum if higher), and, with a policy, only when the policy accepts distributed DP with that many
sites (`distributed-dp-min-sites`; absent: refused). Its reply is the noisy integer gradient sum in
place of a model; secure aggregation carries it as it is.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from flwr.app import ConfigRecord
from torch import nn
from torch.utils.data import Dataset

from fedward.client.policy import SitePolicy
from fedward.common.config import RunConfig
from fedward.common.distributed_dp import (
    SITES_KEY,
    clipped_gradient_sum,
    granularity,
    noisy_integer_sum,
    sensitivity,
    share_noise,
)
from fedward.common.privacy import Mechanism
from fedward.common.secure_aggregation import SecAggParameters
from fedward.common.training import TrainOutcome


def sites_in_sum(shared: ConfigRecord, policy: SitePolicy | None) -> tuple[int, str | None]:
    """(t, None) when this round may run under distributed DP, else (0, why not)."""
    sites = int(shared.get(SITES_KEY, 0))
    if sites < 2:
        return (
            0,
            "distributed DP outside secure aggregation: the round does not say how many sites are in the sum",
        )
    if policy is not None:
        wanted = policy.distributed_dp_min_sites
        if wanted is None:
            return 0, "distributed DP is not accepted by this site's policy (distributed-dp-min-sites)"
        if sites < wanted:
            return (
                0,
                f"distributed DP with {sites} sites in the sum, fewer than this site's minimum of {wanted}",
            )
    return sites, None


def ledger_label(sites: int) -> str:
    """What a distributed-DP round's ledger rows are, and against whom their ε holds."""
    return f"train: distributed DP; epsilon against a coordinator seeing the sum of >= {sites} sites"


def distributed_share(
    model: nn.Module,
    train_set: Dataset,
    loss_fn,
    config: RunConfig,
    plan: Mechanism,
    sites: int,
    device: torch.device | str,
) -> tuple[TrainOutcome, dict[str, np.ndarray]]:
    """The site's noisy integer gradient sum at the global model, and the round as accounted: one step
    at the sum's equivalent noise multiplier, q = 1."""
    weights = sum(p.numel() for p in model.parameters() if p.requires_grad)
    gamma = granularity(config.dp_max_grad_norm, config.secure_aggregation_bits)
    delta_l2 = sensitivity(config.dp_max_grad_norm, gamma, weights)
    sigma_share = share_noise(plan.noise_multiplier, delta_l2, sites, weights)
    gradient = clipped_gradient_sum(model, train_set, loss_fn, config.dp_max_grad_norm, device)
    most_sites = SecAggParameters.from_config(config).max_sites  # the coordinator refuses larger rounds
    share = noisy_integer_sum(gradient, gamma, sigma_share, most_sites)
    outcome = TrainOutcome(
        loss=math.nan,
        num_examples=len(train_set),  # type: ignore[arg-type]
        steps=1,
        noise_multiplier=plan.noise_multiplier,
        sample_rate=1.0,
        privacy_steps=[(plan.noise_multiplier, 1.0, 1)],
    )
    return outcome, share
