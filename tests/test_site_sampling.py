"""Scale: sites sampled per round (`fraction-train`, `fraction-evaluate`) and the synthetic `resample`
partition that gives any number of sites from the shipped table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flower_fakes import flower_identity  # noqa: F401 (fixture)
from inprocess_grid import InProcessGrid, ckd_run_config, run_server

from fedward.common.data.ckd import load_ckd_csv
from fedward.common.data.partition import partition_indices
from fedward.common.errors import ConfigError
from fedward.simulations.prepare import prepare_ckd_sites
from fedward.strategies.registry import sample_size


def test_resample_gives_many_stratified_sites_from_a_small_table(ckd_csv: Path) -> None:
    labels = load_ckd_csv(ckd_csv, strict=False).y
    parts = partition_indices(labels, 1000, "resample", rows_per_site=40, seed=3)

    assert len(parts) == 1000 and all(len(p) == 40 for p in parts)
    assert all(len(np.unique(p)) == 40 for p in parts)  # distinct within a site: train and test disjoint
    share = np.mean(labels)
    for p in parts:
        assert abs(labels[p].mean() - share) <= 1 / 40  # the table's class mix, rounded
    assert len(np.unique(np.concatenate(parts))) == len(labels)  # rows repeat across sites
    again = partition_indices(labels, 1000, "resample", rows_per_site=40, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))  # a public, seeded split
    with pytest.raises(ConfigError, match="rows-per-site"):
        partition_indices(labels, 5, "resample", rows_per_site=3)
    with pytest.raises(ConfigError, match="rows-per-site"):
        partition_indices(labels, 5, "resample", rows_per_site=len(labels) + 1)


def test_sample_size_rounds_up_and_never_reaches_zero() -> None:
    assert [sample_size(f, 1000) for f in (0.1, 0.0001, 1.0)] == [100, 1, 1000]
    assert sample_size(0.34, 6) == 3 and sample_size(0.5, 5) == 3
    with pytest.raises(ConfigError, match="fraction"):
        sample_size(0.0, 10)


@pytest.mark.usefixtures("flower_identity")
@pytest.mark.parametrize("strategy", ["fedavg", "scaffold"])
def test_each_round_trains_and_evaluates_a_sample_and_the_run_goes_on(strategy: str, tmp_path: Path) -> None:
    sites, rounds = 6, 3
    prepare_ckd_sites(tmp_path / "sites", sites, "resample", rows_per_site=24)
    config = ckd_run_config(
        tmp_path / "sites",
        tmp_path / "runs",
        **{
            "min-sites": sites,  # every site joins the run; a round needs the sampled share of them
            "fraction-train": 0.34,
            "fraction-evaluate": 0.5,
            "num-server-rounds": rounds,
            "strategy": strategy,
            "run-name": "r",
        },
    )
    grid = InProcessGrid(config, sites)

    run_server(grid, config)

    def destinations(kind: str) -> list[set[int]]:
        per_round: dict[int, set[int]] = {}
        for m in grid.sent:
            if m.metadata.message_type == kind and "config" in m.content.config_records:
                server_round = int(m.content["config"]["server-round"])
                per_round.setdefault(server_round, set()).add(m.metadata.dst_node_id)
        return [per_round[r] for r in sorted(per_round)]

    trained, evaluated = destinations("train"), destinations("evaluate")
    assert [len(s) for s in trained] == [3] * rounds and [len(s) for s in evaluated] == [3] * rounds
    assert len(set().union(*trained)) > 3  # a fresh draw each round, not one fixed subset
    run = tmp_path / "runs" / "r"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped"] is None and summary["rounds-completed"] == rounds
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(sum(s["train"] is not None for s in row["sites"].values()) == 3 for row in rows)
    took_part = {site for row in rows for site, s in row["sites"].items() if s["train"]}
    assert len(summary["sites"]) == sites  # every site is reported, sampled or not
    for site, info in summary["sites"].items():  # steps and ε of any round a site trained in
        assert (info["privacy-steps"] is not None) == (site in took_part), site
        assert (info["epsilon"] is not None) == (site in took_part), site
