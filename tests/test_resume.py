"""Checkpoints and resume: a run killed mid-round and resumed ends with the same weights as one that was not.

The federation runs in process (real ServerApp and ClientApp code, Flower's serialisation both ways);
the coordinator "dies" halfway through sending round 3's training messages, after one site has trained.
The resumed run is a new Flower run: fresh site contexts, as after a real restart.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from flower_fakes import flower_identity  # noqa: F401 (fixture)
from inprocess_grid import InProcessGrid, ServerCrashed, ckd_run_config, run_server

from fedward.common.errors import ConfigError
from fedward.server.checkpoint import CHECKPOINT, RoundCheckpoint
from fedward.server.rundir import RunDirectory
from fedward.simulations.prepare import prepare_ckd_sites

pytestmark = pytest.mark.usefixtures("flower_identity")
SITES = 3
ROUNDS = 4


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sites")
    prepare_ckd_sites(root, SITES, "iid")
    return root


def _crash_in_round(server_round: int):
    """Crash before the second training message of `server_round` (so one site has trained it)."""
    sent: list[int] = []

    def crash(message) -> bool:
        if (
            message.metadata.message_type == "train"
            and message.content["config"]["server-round"] == server_round
        ):
            sent.append(message.metadata.dst_node_id)
        return len(sent) == 2

    crash.sent = sent  # type: ignore[attr-defined]
    return crash


def _run(config: dict, crash=None) -> None:
    run_server(InProcessGrid(config, SITES, crash), config)


def _interrupted_and_resumed(sites: Path, runs: Path, name: str, **settings) -> list[int]:
    config = ckd_run_config(sites, runs, **{"run-name": name, **settings})
    crash = _crash_in_round(3)
    with pytest.raises(ServerCrashed):
        _run(config, crash)
    checkpoint = RoundCheckpoint.load(runs / name)
    assert checkpoint is not None and checkpoint.server_round == 2
    _run({**config, "resume": True})
    return crash.sent


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pt")


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam", "scaffold"])
def test_resumed_run_ends_with_the_same_weights(
    sites: Path,
    tmp_path: Path,
    strategy: str,
) -> None:
    settings = {"num-server-rounds": ROUNDS, "dp": False, "min-sites": SITES, "strategy": strategy}
    _run(ckd_run_config(sites, tmp_path, **{"run-name": "whole", **settings}))
    _interrupted_and_resumed(sites, tmp_path, "resumed", **settings)

    whole, resumed = _weights(tmp_path / "whole"), _weights(tmp_path / "resumed")
    assert whole.keys() == resumed.keys()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key  # bit for bit on CPU
    rounds = [json.loads(line)["round"] for line in (tmp_path / "resumed" / "metrics.jsonl").open()]
    assert rounds == [1, 2, 3, 4]
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["resumed-after-round"] == 2 and summary["rounds-completed"] == ROUNDS
    assert RoundCheckpoint.load(tmp_path / "resumed").server_round == ROUNDS


def test_steps_of_the_lost_round_count_towards_epsilon(
    sites: Path,
    tmp_path: Path,
) -> None:
    """Same weights with DP under the seeded research switch (with secret noise only ε is comparable), but
    the site that trained the lost round spent those steps: its ε grows."""
    settings = {
        "num-server-rounds": ROUNDS,
        "min-sites": SITES,
        "dp-noise-multiplier": 1.2,
        "dp-seeded-noise": True,
    }

    def clean_sites() -> None:  # ledgers, kept statistics releases and run state live beside the data
        for i in range(SITES):
            for old in sorted((sites / f"site-{i}" / "state").glob("**/*"), reverse=True):
                old.unlink() if old.is_file() else old.rmdir()

    clean_sites()
    _run(ckd_run_config(sites, tmp_path, **{"run-name": "whole", **settings}))
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())["sites"]
    clean_sites()  # the resumed run pays for its own statistics release, as the whole run did
    sent = _interrupted_and_resumed(sites, tmp_path, "resumed", **settings)
    resumed = json.loads((tmp_path / "resumed" / "summary.json").read_text())["sites"]

    for key, value in _weights(tmp_path / "whole").items():
        assert torch.equal(value, _weights(tmp_path / "resumed")[key])
    trained_twice = f"site-{sent[0] - 101}"
    for site, report in resumed.items():
        if site == trained_twice:
            assert report["privacy-steps"] > whole[site]["privacy-steps"]
            assert report["epsilon"] > whole[site]["epsilon"]
        else:
            assert report["privacy-steps"] == whole[site]["privacy-steps"]
            assert report["epsilon"] == pytest.approx(whole[site]["epsilon"], rel=1e-9)


def test_central_dp_accountant_resumes_with_the_run(sites: Path, tmp_path: Path) -> None:
    """Central-DP noise is secret (OS entropy), so the weights differ from an uninterrupted run's; the
    resumed run completes and its accountant and adaptive clipping norm continue from the checkpoint."""
    settings = {"num-server-rounds": 3, "dp": False, "min-sites": SITES, "central-dp": True}
    _run(ckd_run_config(sites, tmp_path, **{"run-name": "whole", **settings}))
    _interrupted_and_resumed(sites, tmp_path, "resumed", **settings)
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    resumed = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert resumed["rounds-completed"] == 3 and resumed["stopped"] is None
    assert resumed["central-dp"]["releases"] == whole["central-dp"]["releases"] == 3  # lost round: no release
    assert resumed["central-dp"]["epsilon"] == pytest.approx(whole["central-dp"]["epsilon"], rel=1e-9)
    checkpoint = RoundCheckpoint.load(tmp_path / "resumed")
    assert set(checkpoint.rng) == {"python", "torch"}  # no state of a generator that drew noise
    central = checkpoint.strategy[1]  # ValidatedStrategy, then the central-DP layer
    assert central["adaptive"] and central["clipping_norm"] != 1.0  # C moved over three releases


def test_resume_needs_a_run_name(sites: Path, tmp_path: Path) -> None:
    config = ckd_run_config(sites, tmp_path, **{"resume": True, "dp": False, "min-sites": SITES})
    with pytest.raises(ConfigError, match="run-name"):
        _run(config)


def test_resume_before_any_completed_round_starts_over(
    sites: Path,
    tmp_path: Path,
) -> None:
    config = ckd_run_config(
        sites, tmp_path, **{"run-name": "early", "num-server-rounds": 2, "dp": False, "min-sites": SITES}
    )
    with pytest.raises(ServerCrashed):
        _run(config, _crash_in_round(1))
    assert not (tmp_path / "early" / CHECKPOINT).exists()
    _run({**config, "resume": True})
    rounds = [json.loads(line)["round"] for line in (tmp_path / "early" / "metrics.jsonl").open()]
    assert rounds == [1, 2]


def test_records_after_the_checkpoint_are_dropped(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path)
    for r in (1, 2, 3):
        run.append_round({"round": r})
    run.truncate_rounds(2)
    assert [json.loads(line)["round"] for line in (tmp_path / "metrics.jsonl").open()] == [1, 2]
