"""Baselines for a federated run: pooled (centralised) training and local-only training per site.

Both train the run's model (same initialisation, loop, optimiser, batch size and learning rate) for the
run's `rounds × local-epochs` epochs and are evaluated on each site's held-out split, so a result table
can put federated, pooled and local side by side:

- **pooled**: one model on the union of the sites' training splits, with the preprocessing the
  federation shares (CKD: the federated means and deviations, which equal the pooled ones). Its
  optimiser steps, `rounds × epochs × ⌈N/B⌉`, equal the federation's total `Σ_i rounds × epochs × ⌈n_i/B⌉`
  up to rounding (both are reported). With DP it trains with DP-SGD on the union as a reference
  (same target ε, δ = 1/(10 N) unless the run's δ fits N).
- **local**: each site alone, from the same initial model, for the same local steps it takes in the
  federation, with its own preprocessing and its own DP: the run's ε target calibrated for its n, and
  its policy file when it has one (a round the policy refuses is not trained, as in the federation).

Hostile, dropout and straggler settings do not apply: baselines train on every site's honest data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from fedward.client.budget import SiteBudget, SitePrivacy
from fedward.common.config import RunConfig
from fedward.common.device import pick_device
from fedward.common.privacy import PrivacyHistory
from fedward.common.tasks import SiteData, SiteSource, Task, get_task
from fedward.common.training import train_model

NOT_AVERAGED = {"num-examples", "site-weight", "tp", "fp", "tn", "fn", "steps", "epsilon", "delta"}
NOT_AVERAGED |= {"noise-multiplier", "refused"}


def load_sites(config: RunConfig, data_root: Path, num_sites: int) -> list[SiteData]:
    """Every simulated site's validated data, read as its client reads it (`data-root/site-<i>`)."""
    task = get_task(config.task)
    return [
        task.load_site(SiteSource(f"site-{i}", data_root / f"site-{i}", i, num_sites), config)
        for i in range(num_sites)
    ]


def pooled_baseline(
    config: RunConfig, sites: Sequence[SiteData], *, device: torch.device | None = None
) -> dict[str, Any]:
    """Train one model on all sites' training splits together; evaluate it at every site."""
    started = time.perf_counter()
    task, device = get_task(config.task), device or pick_device(config.device)
    shared = _shared(task, sites)
    splits = [task.datasets(site, shared) for site in sites]
    union = ConcatDataset([train for train, _ in splits])
    if config.dp and config.dp_delta * len(union) > 1:  # the run's δ suits the sites, not the union
        config = config.model_copy(update={"dp_delta": 0.0})
    model = initial_model(task, config)
    trained = train_rounds(task, config, model, union, SiteBudget(SitePrivacy(), []), 0, device)
    per_site = {
        site.site_id: task.evaluate(model, test, device)
        for site, (_, test) in zip(sites, splits, strict=True)
    }
    return {
        "overall": task.pool(list(per_site.values())),
        "mean-over-sites": site_mean(per_site),
        "sites": per_site,
        "num-train": len(union),
        **trained,
        "seconds": time.perf_counter() - started,
    }


def local_baselines(
    config: RunConfig,
    sites: Sequence[SiteData],
    policies: Sequence[Path | None] = (),
    *,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Train each site alone (its own preprocessing, its own DP and policy); evaluate it on its own split."""
    started = time.perf_counter()
    task, device = get_task(config.task), device or pick_device(config.device)
    per_site: dict[str, dict[str, Any]] = {}
    for index, site in enumerate(sites):
        train, test = task.datasets(site, _shared(task, [site]))
        policy = policies[index] if index < len(policies) else None
        model = initial_model(task, config)
        trained = train_rounds(
            task, config, model, train, SiteBudget(SitePrivacy(None, policy), []), index, device
        )
        per_site[site.site_id] = {**task.evaluate(model, test, device), **trained}
    return {
        "overall": task.pool(list(per_site.values())),
        "mean-over-sites": site_mean(per_site),
        "sites": per_site,
        "seconds": time.perf_counter() - started,
    }


def run_baselines(
    config: RunConfig, data_root: Path, num_sites: int, policies: Sequence[Path | None] = ()
) -> dict[str, Any]:
    """Pooled and local-only baselines of a run whose sites live in `data_root/site-<i>`."""
    sites = load_sites(config, data_root, num_sites)
    return {"pooled": pooled_baseline(config, sites), "local": local_baselines(config, sites, policies)}


def site_mean(per_site: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Unweighted mean over sites of each metric every site reports (NaN values left out)."""
    if not per_site:
        return {}
    keys = set.intersection(*(set(m) for m in per_site.values()))
    out = {}
    for key in sorted(keys - NOT_AVERAGED):
        values = [m[key] for m in per_site.values()]
        if key.startswith("cm-") or not all(isinstance(v, int | float) and v is not None for v in values):
            continue
        finite = [float(v) for v in values if not math.isnan(float(v))]
        out[key] = float(np.mean(finite)) if finite else math.nan
    return out


def _shared(task: Task, sites: Sequence[SiteData]) -> dict[str, Any]:
    """The preprocessing `sites` would agree on, from their exact sums (baselines run where the data is)."""
    return task.combine_statistics([task.statistics(site)[0].sum(axis=0) for site in sites])


def initial_model(task: Task, config: RunConfig) -> nn.Module:
    """The federation's initial global model (the server seeds it the same way)."""
    torch.manual_seed(config.seed)
    return task.build_model(config)


def train_rounds(
    task: Task,
    config: RunConfig,
    model: nn.Module,
    train: Dataset,
    budget: SiteBudget,
    site_index: int,
    device: torch.device,
) -> dict[str, Any]:
    """`rounds` calls of the shared training loop, as a site runs them, under `budget`'s DP and policy."""
    n = len(train)  # type: ignore[arg-type]
    plan = budget.plan(config, n)
    dp = config.privacy if plan else None
    history, steps, refused = PrivacyHistory(), 0, None
    for server_round in range(1, config.num_server_rounds + 1):
        reason = budget.refusal(config, plan, n, history)
        if reason is not None:  # a refused round stays refused: ε only grows
            refused = f"round {server_round}: {reason}"
            break
        local = config.local_training(server_round, site_index)
        outcome = train_model(
            model,
            train,
            task.loss,
            local,
            dp,
            mechanism=plan,
            device=device,
            grad_sample_mode=task.grad_sample_mode,
        )
        history.extend(outcome.privacy_steps)
        steps += outcome.steps
    model.to("cpu")
    return {
        "steps": steps,
        "epsilon": history.epsilon(plan.delta, config.dp_accountant) if plan else math.inf,
        "delta": plan.delta if plan else None,
        "noise-multiplier": plan.noise_multiplier if plan else 0.0,
        "refused": refused,
    }
