"""Cross-site evaluation: the global model and each site's local-only model on every held-out split."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from flower_fakes import flower_identity  # noqa: F401 (fixture)
from inprocess_grid import InProcessGrid, ckd_run_config, run_server

from fedward.simulations.prepare import prepare_ckd_sites

pytestmark = pytest.mark.usefixtures("flower_identity")
SITES = 3


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def test_matrix_has_a_finite_cell_per_site_pair_and_local_training_is_accounted(tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    prepare_ckd_sites(sites, SITES, "dirichlet", alpha=0.5, seed=1)
    config = ckd_run_config(
        sites, tmp_path / "runs",
        **{"run-name": "x", "num-server-rounds": 2, "min-sites": SITES, "dp-noise-multiplier": 1.0,
           "cross-site-local": True},
    )  # fmt: skip
    grid = InProcessGrid(config, SITES)
    run_server(grid, config)

    run = tmp_path / "runs" / "x"
    cross = json.loads((run / "cross-site.json").read_text())
    names = [f"site-{i}" for i in range(SITES)]
    assert cross["sites"] == names and cross["metric"] == "accuracy"
    for site in names:
        row = cross["global"][site]
        assert _finite(row["accuracy"])
        assert row["accuracy-ci-low"] <= row["accuracy"] <= row["accuracy-ci-high"]
    assert sorted(cross["local"]) == names and not cross["local-refused"]
    for trained in names:
        assert sorted(cross["local"][trained]) == names
        for evaluated in names:
            cell = cross["local"][trained][evaluated]
            assert _finite(cell["accuracy"]) and _finite(cell["loss"]) and _finite(cell["ece"])
            assert cell["num-examples"] > 0
    # local-only training spent privacy too: the summary reports the run's whole ε per site
    last_round = [json.loads(line) for line in (run / "metrics.jsonl").open()][-1]
    summary = json.loads((run / "summary.json").read_text())
    for site in names:
        assert cross["local-epsilon"][site] > last_round["epsilon"][site]
        assert summary["sites"][site]["epsilon"] == cross["local-epsilon"][site]
        # the lifetime figure too (the review found "ε lifetime 0.998" while the ledger said 1.431)
        lifetime = summary["sites"][site]["epsilon-lifetime"]
        assert (
            lifetime
            == cross["local-privacy"][site]["epsilon-lifetime"]
            > last_round["budget"][site]["epsilon-lifetime"]
        )
        assert summary["sites"][site]["privacy-steps"] == cross["local-privacy"][site]["privacy-steps"]
    card = (run / "MODEL_CARD.md").read_text()
    assert all(f"{summary['sites'][s]['epsilon-lifetime']:.3f}"[:4] in card for s in names)
    local_messages = [r for r in grid.replies if r.metadata.message_type == "train.local"]
    assert len(local_messages) == SITES


def test_without_local_models_only_the_global_row(tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    prepare_ckd_sites(sites, SITES, "iid")
    config = ckd_run_config(
        sites, tmp_path / "runs", **{"run-name": "g", "num-server-rounds": 1, "min-sites": SITES, "dp": False}
    )
    run_server(InProcessGrid(config, SITES), config)
    cross = json.loads((tmp_path / "runs" / "g" / "cross-site.json").read_text())
    assert set(cross) == {"sites", "metric", "global"}
    assert all(_finite(cross["global"][s]["roc-auc"]) for s in cross["sites"])
