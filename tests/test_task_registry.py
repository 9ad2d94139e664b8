"""The task registry, and docs/architecture.md's "How to add a task" followed step by step: a toy task
registered from this file runs through a 2-site federation (the real ServerApp and ClientApp) to the
end, without any other module naming it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flower_fakes import flower_identity  # noqa: F401 (fixture)
from inprocess_grid import InProcessGrid, ckd_run_config, run_server
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

from fedward.common.config import RunConfig
from fedward.common.errors import ConfigError
from fedward.common.imaging_models import CLASSIFIERS, SEGMENTERS
from fedward.common.metrics import binary_metrics, pool_binary
from fedward.common.models import TABULAR_MODELS
from fedward.common.tasks import (
    TASKS,
    CardText,
    SiteData,
    SiteSource,
    Task,
    TaskSpec,
    get_task,
    register_task,
    task_spec,
    unregister_task,
)
from fedward.common.training import predict_proba

TOY = "toy-threshold"
PREDICTS = "whether the first of two toy measurements is positive"


# Step 1 of the how-to: the heavy Task (data, model, loss, metrics).
class ToyTask(Task):
    """Two features per row in `data.csv`; the label is 1 when the first is positive."""

    name = TOY

    def load_site(self, source: SiteSource, config: RunConfig) -> SiteData:
        """All rows of the site's CSV; the last quarter is held out."""
        assert source.data_dir is not None
        file = source.data_dir / "data.csv"
        rows = np.loadtxt(file, delimiter=",", skiprows=1, dtype=np.float32)
        x, y = rows[:, :2], rows[:, 2].astype(np.int64)
        cut = len(y) * 3 // 4
        train, test = (x[:cut], y[:cut]), (x[cut:], y[cut:])
        keys = [hashlib.sha256(r.tobytes()).hexdigest() for r in rows]
        report = {"rows-read": float(len(y))}
        return SiteData(source.site_id, train, test, cut, len(y) - cut, report, [], [file], keys)

    def datasets(self, site: SiteData, shared: Mapping[str, Any]) -> tuple[Dataset, Dataset]:
        """Tensors as read (no federated preprocessing)."""
        return tuple(TensorDataset(*map(torch.from_numpy, part)) for part in (site.train, site.test))

    def build_model(self, config: RunConfig) -> nn.Module:
        """Logistic regression over the two features."""
        return nn.Linear(2, 2)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (0 on an empty Poisson batch)."""
        return F.cross_entropy(output, target) if len(target) else output.sum() * 0.0

    def evaluate(
        self, model: nn.Module, test: Dataset, device: torch.device, *, intervals: bool = False
    ) -> dict[str, float]:
        """Binary metrics with the confusion counts that pool exactly."""
        probs, labels = predict_proba(model, test, device)
        out = binary_metrics(labels, probs[:, 1], intervals=intervals)
        return {**{k: float(v) for k, v in out.items()}, "num-examples": float(len(labels))}

    def pool(self, per_site: list[dict[str, float]]) -> dict[str, float]:
        """Exact pooled threshold metrics."""
        return pool_binary(per_site)


# Step 2: the light spec, registered (a plug-in does this when its module is imported).
TOY_SPEC = TaskSpec(
    name=TOY,
    factory=ToyTask,
    card=CardText(predicts=PREDICTS, use="showing how a task is added", simulated_source="toy CSV files"),
    metrics=("f1", "accuracy"),
    columns=("f1", "accuracy"),
    primary_metric="f1",
    class_names=lambda run_config: ("negative", "positive"),
    labels=lambda site: (site.train[1], site.test[1]),
    unit="rows",
    models=("linear",),
)


@pytest.fixture
def toy_task() -> Iterator[TaskSpec]:
    """The toy task, registered for one test and removed after it."""
    register_task(TOY_SPEC)
    try:
        yield TOY_SPEC
    finally:
        unregister_task(TOY)


def _toy_sites(root: Path, sites: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(sites):
        x = rng.normal(size=(48, 2)).astype(np.float32)
        rows = np.column_stack([x, (x[:, 0] > 0).astype(np.float32)])
        (root / f"site-{i}").mkdir(parents=True)
        np.savetxt(root / f"site-{i}" / "data.csv", rows, delimiter=",", header="a,b,label", comments="")
    return root


@pytest.mark.usefixtures("flower_identity")
def test_a_task_registered_from_outside_runs_a_federation_to_the_end(tmp_path: Path, toy_task) -> None:
    data = _toy_sites(tmp_path / "sites", 2)
    config = ckd_run_config(
        data, tmp_path / "runs",
        **{"task": TOY, "run-name": "toy", "num-server-rounds": 2, "min-sites": 2, "dp-noise-multiplier": 1.0,
           "lr": 0.5},
    )  # fmt: skip
    run_server(InProcessGrid(config, 2), config)

    run = tmp_path / "runs" / "toy"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == TOY and summary["rounds-completed"] == 2
    assert set(summary["sites"]) == {"site-0", "site-1"}
    assert all(summary["sites"][s]["epsilon"] > 0 for s in summary["sites"])  # trained under DP
    assert 0.0 <= summary["overall"]["f1"] <= 1.0
    cross = json.loads((run / "cross-site.json").read_text())
    assert cross["metric"] == "f1"  # the spec's primary metric, not a name test
    card = (run / "MODEL_CARD.md").read_text()
    assert PREDICTS in card and "showing how a task is added" in card and "toy CSV files" in card


def test_registry_finds_builtin_tasks_and_refuses_unknown_or_taken_names(toy_task) -> None:
    assert {"ckd", "tumour", "tumour-seg", TOY} <= set(TASKS)
    assert isinstance(get_task(TOY), ToyTask)
    with pytest.raises(ConfigError, match="already registered"):
        register_task(TOY_SPEC)
    unregister_task(TOY)
    assert TOY not in TASKS
    with pytest.raises(ConfigError, match=r"unknown task 'toy-threshold'; expected one of ckd, tumour"):
        task_spec(TOY)
    register_task(TOY_SPEC)  # for the fixture's own clean-up


def test_builtin_specs_match_their_tasks() -> None:
    for name in ("ckd", "tumour", "tumour-seg"):
        assert get_task(name).name == name
    assert task_spec("ckd").models == TABULAR_MODELS
    assert task_spec("tumour").models == CLASSIFIERS and task_spec("tumour-seg").models == SEGMENTERS
    assert task_spec("tumour").class_names({"tumour-binary": True}) == ("no tumour", "tumour")
    seg = task_spec("tumour-seg")
    assert seg.class_names({}) is None and seg.primary_metric == "dice"


def test_a_bad_factory_string_names_the_task() -> None:
    spec = TaskSpec(name="broken", factory="fedward.common.tasks.nowhere:Nothing", card=CardText("x", "y"))
    expected = r"task 'broken': factory 'fedward\.common\.tasks\.nowhere:Nothing'"
    with pytest.raises(ConfigError, match=expected):
        spec.build()
