"""A real Flower federation of 3 simulated hospitals on synthetic DICOM MRI, via `fedward sim tumour`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FEDWARD = str(Path(sys.executable).parent / "fedward")


def test_tumour_federation_beats_chance_on_held_out_patients(tmp_path: Path) -> None:
    result = subprocess.run(
        [FEDWARD, "sim", "tumour", "--sites", "3", "--patients", "24", "--model", "cnn", "--rounds", "2",
         "--no-dp", "--name", "mri", "--runs-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=400, env={**os.environ, "FEDWARD_DEVICE": "cpu"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / "mri"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "tumour" and summary["rounds-completed"] == 2
    config = json.loads((run / "config.json").read_text())["run-config"]
    assert (config["model"], config["local-epochs"], config["batch-size"]) == ("cnn", 40, 4)  # CNN recipe
    overall = summary["overall"]
    assert overall["num-examples"] >= 12
    assert overall["accuracy"] >= 0.6  # 4 classes: chance 0.25, majority class about 0.4
    for site in summary["sites"].values():
        data = site["data"]
        assert data["skipped"] == 0 and 0 < data["test-patients"] < 24
        assert "patients" not in data and "train-patients" not in data  # exact sizes stay at the site
        assert data["num-train"] >= 1  # the noisy patient count of the statistics release
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert (run / "sites" / "site-0" / "manifest.csv").is_file()
    assert "overall" in result.stdout
