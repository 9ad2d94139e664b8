"""Central (site-level) DP: the noise is secret, δ and the ε cap hold, clipping adapts, every release
is accounted.

The attack test plays an attacker who has the run's config.json (the seed) and its checkpoint.pt,
regenerates the noise of a release and subtracts it: this worked against the server that seeded numpy's
global generator from the run seed and saved its state in the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flower_fakes import FakeGrid, arrays, flower_identity  # noqa: F401 (fixture)
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod
from flwr.serverapp.strategy import DifferentialPrivacyServerSideAdaptiveClipping
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.supercore.privacy_accounting import GaussianPrivacyEvent
from inprocess_grid import InProcessGrid, ckd_run_config, run_server

from fedward.common.config import RunConfig
from fedward.common.errors import ConfigError
from fedward.common.tasks import get_task
from fedward.server.checkpoint import RoundCheckpoint, strategy_state
from fedward.simulations.prepare import prepare_ckd_sites
from fedward.strategies.central_dp import CentralDP, with_central_dp
from fedward.strategies.registry import StrategySettings, build_strategy

pytestmark = pytest.mark.usefixtures("flower_identity")
SITES = 3
FEDERATION = {"dp": False, "min-sites": SITES, "central-dp": True}  # central DP only, all sites every round


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sites")
    prepare_ckd_sites(root, SITES, "iid")
    return root


def _fedavg(num_sites: int):
    return build_strategy(
        "fedavg",
        num_sites=num_sites,
        train_metrics=aggregate_metricrecords,
        evaluate_metrics=aggregate_metricrecords,
        weighted_by_key="site-weight",
        settings=StrategySettings.from_config(RunConfig()),
    )


def _central(num_sites: int, clipping: str, z: float = 1.0, **kw) -> CentralDP:
    settings = {"noise_multiplier": z, "clipping_norm": 1.0, "delta": 1e-5, "clipping": clipping, **kw}
    return with_central_dp(_fedavg(num_sites), num_sites=num_sites, **settings)


def _round(strategy, server_round: int, norms: list[float], size: int = 4) -> np.ndarray:
    """One round from the zero model; site i's update is norms[i] along the first axis. The release."""
    start = {"w": np.zeros(size, dtype=np.float32)}
    nodes = list(range(11, 11 + len(norms)))
    messages = list(strategy.configure_train(server_round, arrays(start), ConfigRecord({}), FakeGrid(nodes)))
    replies = []
    for message in messages:
        update = np.zeros(size, dtype=np.float32)
        update[0] = norms[message.metadata.dst_node_id - 11]
        content = RecordDict({"arrays": arrays({"w": update}), "metrics": MetricRecord({"site-weight": 1})})
        replies.append(Message(content, reply_to=message))
    released, _ = strategy.aggregate_train(server_round, replies)
    return released["w"].numpy()


def test_adaptive_clipping_tracks_the_median_update_norm() -> None:
    norms = list(np.linspace(1.0, 9.0, 20))  # median 5; C starts at 1, so every update is clipped at first
    ours = _central(20, "adaptive", z=0.5)
    flowers = DifferentialPrivacyServerSideAdaptiveClipping(_fedavg(20), 0.5, 20, initial_clipping_norm=1.0)
    for r in range(1, 41):
        _round(ours, r, norms)
        _round(flowers, r, norms)
    assert 3.5 < ours.clipping_norm < 7.0
    # why fedward does not use Flower 1.42's wrapper: it feeds the clipped fraction into Andrew et al.'s
    # update for the unclipped one, so C runs away from the norms (and it has no accountant)
    assert flowers.clipping_norm < 0.1


@pytest.mark.parametrize("clipping", ["adaptive", "fixed"])
def test_every_release_is_one_gaussian_release_at_z_and_noised_with_the_clipping_norm(clipping: str) -> None:
    z, n, size = 1.0, 10, 20_000
    strategy = _central(n, clipping, z=z)
    released = _round(strategy, 1, [10.0] * n, size=size)  # all clipped to C = 1: the mean is e_0
    noise = released - np.eye(1, size, 0, dtype=np.float32)[0]
    expected = strategy.update_noise_multiplier * 1.0 / n  # z_Δ·C/N with the C that clipped this round
    assert noise.std() == pytest.approx(expected, rel=0.03)
    if clipping == "adaptive":
        assert strategy.update_noise_multiplier > z and strategy.clipping_norm != 1.0
    else:
        assert strategy.update_noise_multiplier == z and strategy.clipping_norm == 1.0
    _round(strategy, 2, [10.0] * n)
    reference = RdpAccountant(
        PrivacyConfig(1e-5, n, NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.NO_AMPLIFICATION)
    )
    reference.compose(GaussianPrivacyEvent(z, n, n), count=2)
    spent = strategy.privacy_spent()
    assert spent.num_releases == 2 and spent.epsilon == pytest.approx(reference.get_epsilon(1e-5))


def test_delta_of_one_over_sites_or_more_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"central-dp-delta .* 3 sites"):
        with_central_dp(_fedavg(3), noise_multiplier=1.0, clipping_norm=1.0, num_sites=3, delta=0.34)
    assert RunConfig().central_dp_delta == 1e-5 and RunConfig().central_dp_clipping == "adaptive"


def _clipped_mean(replies, initial: dict[str, np.ndarray], clip: float) -> dict[str, np.ndarray]:
    """The noiseless aggregate: the mean of the sites' clipped updates."""
    updates = []
    for reply in replies:
        delta = {
            k: a.numpy() - initial[k] for k, a in next(iter(reply.content.array_records.values())).items()
        }
        norm = float(np.sqrt(sum(float(np.sum(d.astype(np.float64) ** 2)) for d in delta.values())))
        updates.append({k: d * min(1.0, clip / norm) for k, d in delta.items()})
    return {k: initial[k] + sum(u[k] for u in updates) / len(updates) for k in initial}


def test_attacker_with_seed_and_checkpoint_cannot_remove_the_noise(sites: Path, tmp_path: Path) -> None:
    z, clip = 1.0, 1.0
    settings = {
        "central-dp-noise-multiplier": z,
        "central-dp-clipping": "fixed",
        "central-dp-clipping-norm": clip,
    }
    config = ckd_run_config(
        sites, tmp_path, **FEDERATION, **settings, **{"run-name": "attacked", "num-server-rounds": 1}
    )
    grid = InProcessGrid(config, SITES)
    run_server(grid, config)
    run = tmp_path / "attacked"

    # What the attacker holds: the seed (config.json) and the released model with the server state.
    seed = json.loads((run / "config.json").read_text())["run-config"]["seed"]
    checkpoint = RoundCheckpoint.load(run)
    assert checkpoint is not None and checkpoint.server_round == 1
    assert set(checkpoint.rng) == {"python", "torch"}  # no state of a generator that drew noise
    released = checkpoint.arrays
    std = z * clip / SITES
    np.random.seed(seed % 2**32)  # how the old server seeded the generator Flower draws the noise from
    guessed = {k: np.random.normal(0, std, a.shape).astype(a.dtype) for k, a in released.items()}
    denoised = {k: released[k] - guessed[k] for k in released}

    torch.manual_seed(seed)  # the initial weights are public (seeded) on purpose
    model = get_task("ckd").build_model(RunConfig.from_flower(config))
    initial = {k: v.numpy() for k, v in model.state_dict().items()}
    truth = _clipped_mean([r for r in grid.replies if r.metadata.message_type == "train"], initial, clip)
    residual = np.sqrt(sum(float(np.sum((denoised[k] - truth[k]) ** 2)) for k in truth))
    noise = std * np.sqrt(sum(a.size for a in released.values()))
    assert residual > 0.5 * noise, "the attacker regenerated the central-DP noise"


def test_epsilon_cap_stops_the_run_before_a_release_above_it(sites: Path, tmp_path: Path) -> None:
    # z = 2, δ = 1e-5: ε 2.17, 3.19, 4.01 after 1, 2, 3 releases; a cap of 4 allows two
    settings = {"central-dp-noise-multiplier": 2.0, "central-dp-max-epsilon": 4.0}
    config = ckd_run_config(
        sites, tmp_path, **FEDERATION, **settings, **{"run-name": "capped", "num-server-rounds": 5}
    )
    run_server(InProcessGrid(config, SITES), config)
    run = tmp_path / "capped"
    summary = json.loads((run / "summary.json").read_text())
    assert "central-dp-max-epsilon" in summary["stopped"]
    assert summary["central-dp"]["releases"] == summary["rounds-completed"] == 2
    assert summary["central-dp"]["epsilon"] <= 4.0 and summary["central-dp"]["delta"] == 1e-5
    checkpoint = RoundCheckpoint.load(run)
    model = torch.load(run / "model.pt")
    assert checkpoint.server_round == 2
    for key, value in checkpoint.arrays.items():  # the model kept is the last one released within the cap
        assert np.array_equal(model[key].numpy(), value)
    assert not any(isinstance(v, np.random.Generator) for s in checkpoint.strategy for v in s.values())


def test_strategy_state_never_holds_a_generator() -> None:
    strategy = _central(3, "adaptive")
    strategy.leaked = np.random.default_rng(0)  # e.g. a generator a future wrapper keeps
    assert all("leaked" not in layer for layer in strategy_state(strategy))
