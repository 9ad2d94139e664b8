"""Distributed DP on secure aggregation: the maths of the share, the site's share in real Opacus, and a
real federation (tests/support/inprocess_grid.py) whose aggregate carries exactly the sum's noise."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flower_fakes import flower_identity  # noqa: F401 (fixture)
from inprocess_grid import InProcessGrid, ckd_run_config, run_server
from test_no_patient_data_leaves import _check_listed, _listed_fields
from torch import nn
from torch.utils.data import TensorDataset

from fedward.client.distributed_dp import sites_in_sum
from fedward.client.policy import SitePolicy
from fedward.common.config import RunConfig
from fedward.common.distributed_dp import (
    SITES_KEY,
    clipped_gradient_sum,
    granularity,
    noisy_integer_sum,
    sensitivity,
    share_noise,
    sum_epsilon_z,
)
from fedward.common.errors import ConfigError
from fedward.common.secure_aggregation import SecAggParameters
from fedward.common.tasks import get_task
from fedward.simulations.baselines import load_sites
from fedward.simulations.prepare import prepare_ckd_sites

SITES = 3
DDP = {"secure-aggregation": True, "distributed-dp": True, "dp-accountant": "rdp"}


def test_each_site_adds_a_root_k_share_of_the_noise() -> None:
    gamma = granularity(1.0, 22)
    delta_l2 = sensitivity(1.0, gamma, 900)
    assert delta_l2 == pytest.approx(4096 + 30)  # C/γ + √d
    for sites in (2, 5, 20):
        share = share_noise(2.0, delta_l2, sites, 900)
        assert share == pytest.approx(2.0 * delta_l2 / math.sqrt(sites))  # τ vanishes at thousands of units
        assert sum_epsilon_z(delta_l2, share, sites, 900) <= 1 / 2.0 + 1e-12
    # at σ of about one unit the discrete sum is less private than the continuous one: τ raises the share
    assert share_noise(0.5, 1.0, 3, 900) > 0.5 / math.sqrt(3)


def test_the_clipped_sum_is_opacus_per_record_clipping() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(40, 4), torch.randint(0, 2, (40,))
    model = nn.Linear(4, 2)
    total = clipped_gradient_sum(model, TensorDataset(x, y), nn.functional.cross_entropy, 0.3)
    expected = {k: np.zeros(tuple(p.shape)) for k, p in model.named_parameters()}
    for i in range(len(y)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        grads = {k: p.grad.double().numpy() for k, p in model.named_parameters()}
        norm = math.sqrt(sum(float((g**2).sum()) for g in grads.values()))
        for k, g in grads.items():
            expected[k] += g * min(1.0, 0.3 / (norm + 1e-6))
    for k, value in total.items():
        np.testing.assert_allclose(value, expected[k], atol=1e-5)


def test_a_share_is_whole_numbers_with_fresh_noise_of_the_planned_size() -> None:
    gradient = {"w": np.full((50, 40), 0.25)}
    first = noisy_integer_sum(gradient, 0.01, 30.0, 10)
    second = noisy_integer_sum(gradient, 0.01, 30.0, 10)
    assert np.array_equal(first["w"], np.rint(first["w"])) and first["w"].shape == (50, 40)
    assert not np.array_equal(first["w"], second["w"])  # OS entropy: never the same draw
    noise = first["w"] - 25.0  # 0.25 / γ = 25 units exactly: the rounding adds nothing here
    assert abs(noise.mean()) < 3 and 27 < noise.std() < 33


def test_sites_take_part_only_in_a_large_enough_sum_their_policy_accepts() -> None:
    base = dict(
        epsilon_cap=10.0, delta=1e-5, clipping_min=0.1, clipping_max=5.0, allowed_tasks=["ckd"], min_samples=1
    )
    assert sites_in_sum({SITES_KEY: 3}, None) == (3, None)  # a simulated site without a policy
    assert sites_in_sum({}, None)[1] is not None  # outside secure aggregation: no sum to hide in
    assert "not accepted" in sites_in_sum({SITES_KEY: 3}, SitePolicy(**base))[1]
    strict = SitePolicy(**base, distributed_dp_min_sites=4)
    assert "fewer than this site's minimum of 4" in sites_in_sum({SITES_KEY: 3}, strict)[1]
    assert sites_in_sum({SITES_KEY: 5}, strict) == (5, None)


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"distributed-dp": True}, "secure-aggregation = true"),
        ({**DDP, "dp-accountant": "prv"}, 'dp-accountant = "rdp"'),
        ({**DDP, "dp": False}, "dp = true"),
        ({**DDP, "strategy": "scaffold"}, "strategy one of"),
    ],
)
def test_configurations_distributed_dp_cannot_serve_are_refused(keys: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        RunConfig.from_flower({**RunConfig().to_flower(), **keys})


@pytest.mark.usefixtures("flower_identity")
def test_the_aggregate_is_one_step_of_the_clipped_gradient_sum_with_the_sums_noise(tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    prepare_ckd_sites(sites, SITES, "iid")
    keys = {**DDP, "min-sites": SITES, "num-server-rounds": 1, "run-name": "ddp", "dp-target-epsilon": 2.0}
    flower = ckd_run_config(sites, tmp_path / "runs", **keys)
    grid = InProcessGrid(flower, SITES)
    run_server(grid, flower)
    config = RunConfig.from_flower(flower)
    run = tmp_path / "runs" / "ddp"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds-completed"] == 1
    assert all(0 < s["epsilon"] <= 2.0 for s in summary["sites"].values())
    assert summary["distributed-dp"] and "does not collude" in (run / "MODEL_CARD.md").read_text()

    collect = [m for m in grid.sent if m.metadata.message_type == "train" and "arrays" in m.content]
    initial = collect[0].content["arrays"].to_torch_state_dict()
    replies = [r for r in grid.replies if r.metadata.message_type == "train" and "metrics" in r.content]
    assert not any("arrays" in r.content for r in replies)  # no site's share leaves unmasked
    listed = _listed_fields()
    for reply in grid.replies:  # every field a site sends under distributed DP is in docs/privacy.md
        _check_listed(reply, listed)
    metrics = [r.content["metrics"] for r in replies]
    count = sum(float(m["num-examples"]) for m in metrics)
    sigma_eq = float(metrics[0]["noise-multiplier"])

    task = get_task("ckd")
    preprocessing = json.loads((run / "config.json").read_text())["preprocessing"]
    exact: dict[str, np.ndarray] = {}
    for site in load_sites(config, sites, SITES):
        model = task.build_model(config)
        model.load_state_dict(initial)
        train, _ = task.datasets(site, preprocessing)
        for k, g in clipped_gradient_sum(model, train, task.loss, config.dp_max_grad_norm).items():
            exact[k] = exact.get(k, 0.0) + g
    final = torch.load(run / "model.pt", weights_only=True)
    residual = np.concatenate(
        [
            (final[k].double().numpy() - initial[k].double().numpy() + config.lr * exact[k] / count).ravel()
            for k in exact
        ]
    )
    weights = residual.size
    gamma = granularity(config.dp_max_grad_norm, config.secure_aggregation_bits)
    # each share is sized for the fewest sites a round may keep (the threshold); all SITES stayed
    fewest = SecAggParameters.from_config(config).threshold_count(SITES)
    share = share_noise(sigma_eq, sensitivity(config.dp_max_grad_norm, gamma, weights), fewest, weights)
    expected = config.lr * gamma * math.sqrt(SITES) * share / count  # the sum of SITES shares, one step
    assert 0.85 < residual.std() / expected < 1.15  # the sum's noise: no more (nor less) than planned
