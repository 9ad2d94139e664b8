"""Nothing a site sends can corrupt the model: real in-process federations with one hostile site.

The hostile site trains honestly, then its reply is altered on the way to the server (a test-only grid).
Each bad reply is rejected with the site's name and reason, the run goes on, and the final model equals
that of a run in which the site's training replies were lost: the site changed nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flower_fakes import SERVER_NODE, TaskIdentity, flower_identity  # noqa: F401 (fixture)
from flwr.app import ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from inprocess_grid import FIRST_NODE, InProcessGrid, ckd_run_config, run_server

from fedward.common.config import RunConfig
from fedward.common.tasks import get_task
from fedward.server.rounds import RoundRecorder, RunStopped
from fedward.server.rundir import RunDirectory
from fedward.server.statistics import SiteInfo
from fedward.simulations.prepare import prepare_ckd_sites
from fedward.strategies.reply_checks import SiteLimits, cap_shares, train_metrics_problem
from fedward.strategies.validation import Rejection, ValidatedStrategy, screen_evaluations

pytestmark = pytest.mark.usefixtures("flower_identity")
HOSTILE = FIRST_NODE + 1  # site-1
Tamper = Callable[[Message, Message, int], Message | None]  # (reply, instruction, round) -> new reply


class HostileGrid(InProcessGrid):
    """Alters the hostile site's successful training replies with `tamper` (None: the reply is lost)."""

    def __init__(self, run_config: dict[str, Any], num_sites: int, tamper: Tamper) -> None:
        super().__init__(run_config, num_sites)
        self.tamper = tamper

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        sent = {m.metadata.dst_node_id: m for m in messages}
        out = []
        for reply in super().send_and_receive(messages, timeout=timeout):
            instruction = sent[reply.metadata.src_node_id]
            if reply.metadata.src_node_id == HOSTILE and instruction.metadata.message_type == "train":
                server_round = int(instruction.content["config"]["server-round"])
                if not reply.has_error():
                    reply = self.tamper(reply, instruction, server_round)
            if reply is not None:
                out.append(reply)
        return out


def _metric(key: str, value: float) -> Tamper:
    def tamper(reply: Message, _instruction: Message, _round: int) -> Message:
        reply.content["metrics"][key] = value
        return reply

    return tamper


def _no_metrics(reply: Message, _instruction: Message, _round: int) -> Message:
    del reply.content["metrics"]
    return reply


def _lost(reply: Message, _instruction: Message, _round: int) -> Message:
    return Message(Error(code=1, reason="lost"), reply_to=reply)


def _scaled(factor: float, from_round: int = 1) -> Tamper:
    """w_g + factor · (w - w_g) from round `from_round` on."""

    def tamper(reply: Message, instruction: Message, server_round: int) -> Message:
        if server_round < from_round:
            return reply
        start = {k: a.numpy() for k, a in instruction.content["arrays"].items()}
        sent = {
            k: (start[k] + factor * (a.numpy() - start[k])).astype(a.numpy().dtype)
            if np.issubdtype(a.numpy().dtype, np.floating)
            else a.numpy()
            for k, a in reply.content["arrays"].items()
        }
        reply.content["arrays"] = ArrayRecord({k: torch.from_numpy(v) for k, v in sent.items()})
        return reply

    return tamper


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sites")
    prepare_ckd_sites(root, 3, "iid")
    return root


@pytest.fixture(scope="module")
def reference(sites: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run in which site-1's training replies are lost."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SERVER_NODE, 1  # as flower_identity
    try:
        return _run(sites, tmp_path_factory.mktemp("runs"), "lost", _lost)
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _run(sites: Path, runs: Path, name: str, tamper: Tamper, num_sites: int = 3, **settings: Any) -> Path:
    base = {"num-server-rounds": 2, "dp": False, "min-sites": 2, "run-name": name}
    config = ckd_run_config(sites, runs, **{**base, **settings})
    run_server(HostileGrid(config, num_sites, tamper), config)
    return runs / name


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _same_model(a: Path, b: Path) -> bool:
    first, second = torch.load(a / "model.pt"), torch.load(b / "model.pt")
    return all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize(
    ("name", "tamper", "reason"),
    [
        ("nan", _metric("num-examples", math.nan), "'num-examples' is nan"),
        ("huge", _metric("num-examples", 1e9), "more than the"),
        ("negative", _metric("num-examples", -5), "expected a count > 0"),
        ("no-record", _no_metrics, "MetricRecords [] in the reply"),
    ],
)
def test_a_bad_reply_is_rejected_and_changes_nothing(
    sites: Path, reference: Path, tmp_path: Path, name: str, tamper: Tamper, reason: str
) -> None:
    run = _run(sites, tmp_path, name, tamper)
    summary = _summary(run)
    assert summary["stopped"] is None and summary["rounds-completed"] == 2
    assert summary["sites"]["site-1"]["updates-rejected"] == 2
    rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert reason in rounds[0]["rejected"]["site-1"]
    assert _same_model(run, reference)  # the hostile site changed nothing


def test_missing_num_examples_key_is_rejected(sites: Path, tmp_path: Path) -> None:
    def drop(reply: Message, _instruction: Message, _round: int) -> Message:
        metrics = dict(reply.content["metrics"])
        del metrics["num-examples"]
        reply.content["metrics"] = MetricRecord(metrics)
        return reply

    run = _run(sites, tmp_path, "no-key", drop)
    rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rounds[1]["rejected"]["site-1"] == "no 'num-examples' metric"
    assert _summary(run)["rounds-completed"] == 2


def test_a_million_fold_update_from_one_of_two_sites_is_rejected(sites: Path, tmp_path: Path) -> None:
    """Without DP: round 1's median norm x update-norm-factor bounds round 2 on."""
    run = _run(sites, tmp_path, "scaled", _scaled(1e6, from_round=2), num_sites=2)
    rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rounds[0]["rejected"] == {}
    assert "update norm" in rounds[1]["rejected"]["site-1"]
    assert _summary(run)["stopped"] is None


def test_dp_bound_rejects_a_million_fold_update_in_the_first_round(sites: Path, tmp_path: Path) -> None:
    """Under DP the bound follows from C, σ, lr and the steps: it holds from round 1, with two sites."""
    run = _run(
        sites, tmp_path, "dp-scaled", _scaled(1e6), num_sites=2, **{"dp": True, "num-server-rounds": 1}
    )
    rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "DP-SGD bound" in rounds[0]["rejected"]["site-1"]
    assert rounds[0]["rejected"].keys() == {"site-1"}  # the honest DP update is within the bound


def test_metric_values_are_checked() -> None:
    def reply(**metrics: float) -> Message:
        instruction = Message(RecordDict({}), dst_node_id=HOSTILE, message_type="train")
        content = RecordDict({"metrics": MetricRecord({"num-examples": 10, "epsilon": math.inf, **metrics})})
        return Message(content, reply_to=instruction)

    limits = SiteLimits(max_examples=11)
    assert train_metrics_problem(reply(), limits, "num-examples") is None
    assert "expected an integer" in (
        train_metrics_problem(reply(**{"num-examples": 2.5}), limits, "num-examples") or ""
    )
    assert "expected a count > 0" in (
        train_metrics_problem(reply(**{"num-examples": 0}), limits, "num-examples") or ""
    )
    assert (
        train_metrics_problem(reply(**{"site-seconds": math.inf}), limits, "num-examples")
        == "'site-seconds' is inf"
    )
    assert train_metrics_problem(reply(epsilon=-math.inf), limits, "num-examples") == "'epsilon' is -inf"
    assert train_metrics_problem(reply(), limits, "num-examples", ("delta",)) == "no 'delta' metric"
    assert train_metrics_problem(reply(**{"train-loss": math.nan}), limits, "num-examples") is None


def test_an_empty_held_out_split_is_set_aside_quietly() -> None:
    def reply(node: int, **metrics: float) -> Message:
        instruction = Message(RecordDict({}), dst_node_id=node, message_type="evaluate")
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=instruction)

    full = reply(FIRST_NODE, **{"num-examples": 30, "accuracy": 0.9, "loss": 0.3})
    empty = [reply(FIRST_NODE + i, **{"num-examples": 0}) for i in (1, 2)]  # more sites than the full one
    seen: list[list[Rejection]] = []
    strategy = ValidatedStrategy(FedAvg(), on_reject_evaluate=lambda _round, rejected: seen.append(rejected))

    pooled = strategy.aggregate_evaluate(1, [full, *empty])

    assert screen_evaluations([full, *empty]) == ([full], [])
    assert seen == [[]] and pooled is not None and pooled["accuracy"] == pytest.approx(0.9)
    assert screen_evaluations(empty) == ([], [])


def test_weights_are_capped_at_the_configured_share() -> None:
    assert cap_shares([1e9, 10.0], 0.5) == [10.0, 10.0]
    capped = cap_shares([1e9, 10.0, 30.0], 0.5)
    assert capped[0] == pytest.approx(40.0) and capped[1:] == [10.0, 30.0]
    assert cap_shares([10.0, 20.0, 30.0], 0.5) == [10.0, 20.0, 30.0]
    assert cap_shares([5.0, 1.0, 1.0], 0.2) == [1.0, 1.0, 1.0]  # below 1/n: equal weights


def test_a_non_finite_aggregate_stops_the_run_and_keeps_the_last_finite_model(tmp_path: Path) -> None:
    run = RunDirectory.create(str(tmp_path), "run")
    recorder = RoundRecorder(run, get_task("ckd"), [SiteInfo(11, "site-0", {}, {})], 3, min_sites=0)
    good = ArrayRecord({"w": torch.ones(2)})
    recorder.on_train(1, [], good, None)
    with pytest.raises(RunStopped, match="non-finite values in 'w'"):
        recorder.on_train(2, [], ArrayRecord({"w": torch.tensor([1.0, math.nan])}), None)
    assert recorder.arrays is good and "non-finite" in (recorder.stop_reason or "")


def test_a_site_misreporting_its_release_noise_keeps_its_update_bound() -> None:
    """Attack: a hostile site reports its statistics release at noise multiplier 0.001, or 10⁶, or with a
    bound of 10⁶. Were the server to take the first, the release alone would exceed the run's ε and no DP-SGD
    σ could be planned (no bound); the others would widen the site's plausible patient counts to 1 .. 10⁷ and
    its bound with them (10⁸–10⁹ for a bound of 150). The server assumes the run's σ for every site; a site's
    reported noise may only narrow its range."""
    from fedward.server.app import _site_limits

    config = RunConfig(task="ckd", dp=True, optimizer="sgd", dp_target_epsilon=1.0)
    task = get_task("ckd")
    model = ArrayRecord(task.build_model(config).state_dict())

    def site(node_id: int, sigma: float, bound: float = 1.0) -> SiteInfo:
        statistics = {"sums": [64.0], "noise-multiplier": sigma, "bound": bound, "num-examples": 64}
        return SiteInfo(node_id=node_id, site_id=f"site-{node_id}", statistics=statistics, report={})

    reports = [site(1, 6.0, task.statistics_bound), site(2, 1e-3), site(3, 1e6), site(4, 6.0, 1e6)]
    limits = _site_limits(config, reports, model, task)
    honest = limits[1].max_update_norm
    assert honest > 0
    assert all(0 < limits[node].max_update_norm <= honest for node in (2, 3, 4))
