"""Update validation: a NaN, a wrong shape, a 1000x-norm update (and other bad replies) are each
rejected, logged and counted, and the round aggregates the rest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flower_fakes import FakeGrid, arrays, flower_identity  # noqa: F401 (fixture)
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian

from fedward.common.tasks import get_task
from fedward.server.rounds import RoundRecorder
from fedward.server.rundir import RunDirectory
from fedward.server.statistics import SiteInfo
from fedward.strategies.validation import Rejection, ValidatedStrategy

pytestmark = pytest.mark.usefixtures("flower_identity")

NODES = [11, 12, 13, 14, 15]
GLOBAL = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}


def _shifted(value: float) -> dict[str, np.ndarray]:
    return {k: v + value for k, v in GLOBAL.items()}


def _run(models: dict[int, dict | RecordDict], inner=None, **checks: float):
    """One round through ValidatedStrategy(inner): node -> model dict (or whole reply content)."""
    seen: list[tuple[int, list[Rejection]]] = []
    strategy = ValidatedStrategy(
        inner or FedAvg(min_train_nodes=len(models), min_available_nodes=len(models)),
        on_reject=lambda rnd, rejected: seen.append((rnd, rejected)),
        **checks,
    )
    messages = strategy.configure_train(1, arrays(GLOBAL), ConfigRecord({}), FakeGrid(list(models)))
    replies = []
    for message in messages:
        model = models[message.metadata.dst_node_id]
        content = (
            model
            if isinstance(model, RecordDict)
            else RecordDict({"arrays": arrays(model), "metrics": MetricRecord({"num-examples": 10})})
        )
        replies.append(Message(content, reply_to=message))
    new, _ = strategy.aggregate_train(1, replies)
    assert len(seen) == 1 and seen[0][0] == 1
    return new, {r.node_id: r.reason for r in seen[0][1]}


def test_nan_wrong_shape_and_huge_updates_are_rejected_and_the_rest_aggregated() -> None:
    nan = _shifted(0.1)
    nan["w"][0, 0] = np.nan
    wrong_shape = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(2, np.float32)}
    models = {11: _shifted(0.1), 12: _shifted(0.2), 13: nan, 14: wrong_shape, 15: _shifted(1000 * 0.15)}
    new, rejected = _run(models, norm_factor=10.0)
    assert set(rejected) == {13, 14, 15}
    assert "non-finite" in rejected[13] and "'w'" in rejected[13]
    assert "shape of 'w' is (2, 3), expected (3, 2)" in rejected[14]
    assert "x round median" in rejected[15]
    assert np.allclose(new["w"].numpy(), 0.15)  # the mean of the two good updates


def test_absolute_norm_bound() -> None:
    models = {11: _shifted(0.1), 12: _shifted(0.2), 13: _shifted(5.0)}
    new, rejected = _run(models, max_update_norm=1.0)
    assert list(rejected) == [13] and "max-update-norm 1" in rejected[13]
    assert np.allclose(new["b"].numpy(), 0.15)


def test_keys_dtypes_and_extra_records_are_checked() -> None:
    missing = {"w": GLOBAL["w"] + 0.1}
    extra = {**_shifted(0.1), "bias2": np.zeros(2, np.float32)}
    double = {k: v.astype(np.float64) for k, v in _shifted(0.1).items()}
    bad_control = RecordDict(
        {
            "arrays": arrays(_shifted(0.1)),
            "metrics": MetricRecord({"num-examples": 10}),
            "scaffold-control-delta": arrays({"w": np.full((3, 2), np.inf, np.float32)}),
        }
    )
    no_model = RecordDict({"metrics": MetricRecord({"num-examples": 10})})
    models = {11: _shifted(0.3), 12: missing, 13: extra, 14: double, 15: bad_control, 16: no_model}
    new, rejected = _run(models)
    assert set(rejected) == {12, 13, 14, 15, 16}
    assert "missing keys ['b']" in rejected[12]
    assert "unexpected keys ['bias2']" in rejected[13]
    assert "dtype of 'w' is float64, expected float32" in rejected[14]
    assert "of 'scaffold-control-delta'" in rejected[15]
    assert "no 'arrays' ArrayRecord" in rejected[16]
    assert np.allclose(new["w"].numpy(), 0.3)


def test_relative_bound_spares_honest_spread_and_all_rejected_keeps_the_model() -> None:
    _, rejected = _run({11: _shifted(0.1), 12: _shifted(0.3), 13: _shifted(0.5)}, norm_factor=3.0)
    assert rejected == {}
    nan = _shifted(0.1)
    nan["b"][1] = np.inf
    new, rejected = _run({11: nan, 12: nan}, inner=FedMedian(min_train_nodes=2))
    assert new is None and set(rejected) == {11, 12}


def test_recorder_counts_rejections_in_metrics_jsonl(tmp_path: Path) -> None:
    run = RunDirectory.create(str(tmp_path), "run")
    sites = [SiteInfo(11, "site-0", {}, {}), SiteInfo(12, "site-1", {}, {})]
    recorder = RoundRecorder(run, get_task("ckd"), sites, num_rounds=2, min_sites=2)
    recorder.on_rejections(1, [Rejection(12, "update norm 9 > 3 x round median 1")])
    recorder.on_evaluate(1, [], None)
    recorder.on_rejections(2, [])
    recorder.on_evaluate(2, [], None)
    rounds = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rounds[0]["rejected"] == {"site-1": "update norm 9 > 3 x round median 1"}
    assert rounds[0]["rejected-updates"] == 1
    assert rounds[1]["rejected-updates"] == 0
    assert recorder.rejection_counts == {"site-1": 1}
