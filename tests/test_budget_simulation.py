"""A federation where one hospital's lifetime budget runs out: the others finish, and a later run on the
same data is refused at once and stops cleanly with the reason. The real ServerApp and ClientApp talk
through Flower's serialisation in one process (tests/support/inprocess_grid.py); the Ray simulation path
itself is covered by tests/test_simulation.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flower_fakes import flower_identity  # noqa: F401 (fixture)
from inprocess_grid import InProcessGrid, ckd_run_config, run_server
from site_policy import policy_text

from fedward.client.ledger import PrivacyLedger
from fedward.simulations.prepare import prepare_ckd_sites

pytestmark = pytest.mark.usefixtures("flower_identity")

POLICY = policy_text(2.2)


def _run(tmp_path: Path, name: str, min_sites: int) -> dict:
    settings = {"num-server-rounds": 4, "min-sites": min_sites, "dp-target-epsilon": 3.0, "run-name": name}
    config = ckd_run_config(tmp_path / "sites", tmp_path / "runs", **settings)
    run_server(InProcessGrid(config, 3), config)
    return json.loads((tmp_path / "runs" / name / "summary.json").read_text())


def test_site_out_of_budget_is_refused_and_the_others_finish(tmp_path: Path) -> None:
    prepare_ckd_sites(tmp_path / "sites", 3, "iid", seed=0)
    (tmp_path / "sites" / "site-1" / "policy.toml").write_text(POLICY)

    first = _run(tmp_path, "first", min_sites=2)
    assert first["stopped"] is None and first["rounds-completed"] == 4
    capped = first["sites"]["site-1"]
    assert "cap" in capped["refused"]
    assert 1.5 < capped["epsilon-lifetime"] <= 2.2  # trained in rounds 1-2, refused from round 3
    assert capped["epsilon-cap"] == 2.2 and "round 3" in capped["refused"]
    for other in ("site-0", "site-2"):
        assert first["sites"][other]["refused"] is None
        assert 2.5 < first["sites"][other]["epsilon"] <= 3.01
    rounds = [json.loads(line) for line in (tmp_path / "runs" / "first" / "metrics.jsonl").open()]
    assert any("site-1" in failure for r in rounds for failure in r["failures"])
    steps_after_first = PrivacyLedger(tmp_path / "sites" / "site-1").datasets()[0].steps

    second = _run(tmp_path, "second", min_sites=3)
    assert second["stopped"] is not None and "fewer than min-sites = 3" in second["stopped"]
    assert second["rounds-completed"] == 1
    assert "cap" in second["sites"]["site-1"]["refused"]
    # the refused site took no step in the second run
    assert PrivacyLedger(tmp_path / "sites" / "site-1").datasets()[0].steps == steps_after_first
