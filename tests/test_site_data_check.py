"""`fedward site check --data DIR`: the site's data report (classes, missing values, skipped files, PHI,
unit conversions) as JSON and on screen; non-zero exit when something would stop training."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from mri_helpers import CONTRASTS, SPEC
from typer.testing import CliRunner

from client.data_report import check_site_data
from common.config import RunConfig
from fedward.cli import app
from simulations.phantoms import generate_site

MRI = RunConfig(mri_contrasts=",".join(CONTRASTS), image_size=16, image_depth=8)


def _site_check(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["site", "check", *args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_ckd_report_counts_classes_missing_values_and_conversions(ckd_csv: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(ckd_csv, dtype=str, keep_default_na=False)
    sc = pd.to_numeric(frame["sc"], errors="coerce")
    frame["sc"] = (sc * 88.42).round(1).astype(str).replace("nan", "")  # creatinine in µmol/L
    frame = frame.rename(columns={"sc": "Creatinine (umol/L)"})
    frame.loc[4, "bp"] = "high"  # a text cell in a numeric column
    site = tmp_path / "site"
    site.mkdir()
    frame.to_csv(site / "labs.csv", index=False)
    out = tmp_path / "report.json"

    code, output = _site_check("--data", str(site), "--task", "ckd", "--json", str(out))

    assert code == 0, output
    report = json.loads(out.read_text())[0]
    assert report["ok"] and report["samples"] == 400 and report["patients"] == 400
    assert report["per_class"]["ckd"]["samples"] == 250 and report["per_class"]["notckd"]["samples"] == 150
    assert report["missing_per_feature"]["rbc"] > 100  # the real table misses many red-cell readings
    assert any("Creatinine (umol/L)" in line and "sc" in line for line in report["conversions"])
    assert any("row 5" in line and "bp" in line for line in report["cell_issues"])
    assert "high" not in json.dumps(report["conversions"])  # conversions name columns, not values
    assert "per class" in output and "Creatinine (umol/L)" in output


def test_ckd_table_without_labels_blocks(ckd_csv: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    pd.read_csv(ckd_csv, dtype=str).drop(columns=["class"]).to_csv(site / "labs.csv", index=False)

    code, output = _site_check("--data", str(site), "--task", "ckd", "--json", str(tmp_path / "r.json"))

    assert code == 1
    report = json.loads((tmp_path / "r.json").read_text())[0]
    assert not report["ok"] and any("class" in line for line in report["blocking"])
    assert "BLOCKED" in output


@pytest.fixture(scope="module")
def phantom_sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mri")
    clean = generate_site(root / "clean", 1, 6, spec=SPEC, seed=5)
    (next(clean.rglob("*.dcm")).parent / "broken.dcm").write_bytes(b"DICM" + b"\0" * 40)
    return {"clean": clean, "phi": generate_site(root / "phi", 1, 6, spec=SPEC, seed=5, with_phi=True)}


def test_mri_report_lists_classes_patients_and_skipped_files(phantom_sites: dict[str, Path]) -> None:
    report = check_site_data(phantom_sites["clean"], "tumour", config=MRI)

    assert report.ok, report.blocking
    assert report.phi["files-checked"] > 0 and report.phi["files-flagged"] == 0
    assert report.patients == 6
    assert sum(c["samples"] for c in report.per_class.values()) == report.samples
    assert set(report.per_class) == {"glioma", "meningioma", "pituitary", "notumor"}
    assert any("broken.dcm" in line for line in report.skipped)


def test_phi_blocks_unless_the_policy_says_warn(phantom_sites: dict[str, Path]) -> None:
    blocked = check_site_data(phantom_sites["phi"], "tumour", config=MRI)
    assert not blocked.ok
    assert any("PHI" in line and "fedward site deidentify" in line for line in blocked.blocking)
    assert {"name", "private"} <= set(blocked.phi["categories"])
    assert all("Phantom" not in example for example in blocked.phi["examples"])  # never the values

    warned = check_site_data(phantom_sites["phi"], "tumour", config=MRI, phi_gate="warn")
    assert warned.ok and warned.samples == blocked.samples > 0
