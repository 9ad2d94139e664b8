"""`fedward sim`'s final table reads in full at 80 columns."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

import fedward.simulations.cli as sim_cli


def test_final_table_cuts_no_cell_at_80_columns(tmp_path: Path, monkeypatch) -> None:
    metrics = {"accuracy": 0.963, "roc-auc": 0.994, "sensitivity": 0.938, "specificity": 1.0, "f1": 0.968}
    site = {"evaluate": {"num-examples": 27, **metrics}, "epsilon": 2.995}
    summary = {
        "task": "ckd", "strategy": "fedavg", "rounds-completed": 10, "dp": True, "wall-seconds": 14.7,
        "sites": {f"site-{i}": site for i in range(3)}, "overall": {"num-examples": 81, **metrics},
    }  # fmt: skip
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    out = Console(width=80, record=True)
    monkeypatch.setattr(sim_cli, "console", out)

    sim_cli.print_summary(tmp_path)

    text = out.export_text()
    assert "…" not in text
    for header in ("n test", "ε", *metrics):
        assert header in text
    assert text.count("0.938") == 4 and text.count("2.995") == 3
