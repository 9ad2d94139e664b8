"""`fedward site check --data DIR`: the site's data report (classes, missing values, skipped files, PHI,
unit conversions) as JSON and on screen; non-zero exit when something would stop training."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from mri_helpers import CONTRASTS, SPEC
from site_policy import policy_text
from typer.testing import CliRunner

from fedward.cli import app
from fedward.client.data_report import check_site_data
from fedward.client.policy import load_policy
from fedward.common.config import RunConfig
from fedward.common.errors import ConfigError
from fedward.simulations.phantoms import generate_site

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


def _ckd_site(tmp_path: Path, ckd_csv: Path, rows: list[int], name: str = "site") -> Path:
    site = tmp_path / name
    site.mkdir()
    pd.read_csv(ckd_csv, dtype=str, keep_default_na=False).iloc[rows].to_csv(site / "labs.csv", index=False)
    return site


def test_a_site_too_small_to_run_blocks(ckd_csv: Path, tmp_path: Path) -> None:
    code, output = _site_check(
        "--data", str(_ckd_site(tmp_path, ckd_csv, [0])), "--task", "ckd", "--json", str(tmp_path / "r.json")
    )
    assert code == 1 and "Traceback" not in output
    (blocking,) = json.loads((tmp_path / "r.json").read_text())[0]["blocking"]
    assert blocking == "1 usable rows in all; a site needs at least 2 to run"


def test_small_and_skewed_sites_are_warned_about(ckd_csv: Path, tmp_path: Path) -> None:
    labels = pd.read_csv(ckd_csv, dtype=str, keep_default_na=False)["class"].str.strip()
    ckd = [int(i) for i in labels.index[labels == "ckd"][:12]]
    notckd = [int(i) for i in labels.index[labels == "notckd"][:2]]
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text(delta=0.2))

    one_class = check_site_data(_ckd_site(tmp_path, ckd_csv, ckd, "one-class"), "ckd")
    skewed = check_site_data(
        _ckd_site(tmp_path, ckd_csv, ckd + notckd, "skewed"), "ckd", policy=load_policy(policy)
    )

    assert one_class.ok and skewed.ok  # they can run, but not well
    assert any("training split holds one class only (ckd)" in w for w in one_class.warnings)
    assert any("held-out split holds no notckd" in w and "ROC AUC" in w for w in one_class.warnings)
    assert any("fewer than the batch size 16" in w for w in one_class.warnings)
    assert any("fewer than 5 training rows of class(es) notckd (" in w for w in skewed.warnings)
    assert any("site policy delta 0.2 is not below 1/n" in w for w in skewed.warnings)


def test_empty_and_single_class_held_out_splits_evaluate(ckd_csv: Path) -> None:
    from torch.utils.data import TensorDataset

    from fedward.common.tasks import get_task

    task = get_task("ckd")
    model = task.build_model(RunConfig())
    x, y = torch.zeros((1, 24)), torch.zeros(1, dtype=torch.long)
    empty = task.evaluate(model, TensorDataset(x[:0], y[:0]), torch.device("cpu"), intervals=True)
    single = task.evaluate(model, TensorDataset(x, y), torch.device("cpu"), intervals=True)
    assert empty == {"num-examples": 0.0}
    assert single["num-examples"] == 1.0 and math.isnan(single["roc-auc"])


# ----------------------------------------------------------------------------- --contrasts

WANTED = ("t1ce", "flair")


@pytest.fixture(scope="module")
def contrast_sites(
    phantom_sites: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The clean DICOM site (6 patients, t1ce and flair series), a copy without two patients' flair
    series, one without any t1ce series, and a NIfTI site (4 cases) with one case's flair removed."""
    root = tmp_path_factory.mktemp("contrasts")
    clean = phantom_sites["clean"]
    patients = sorted(p for p in clean.iterdir() if p.is_dir() and p.name != "masks")
    some = shutil.copytree(clean, root / "some-without-flair")
    for patient in patients[:2]:
        shutil.rmtree(some / patient.name / "study-1" / "flair")
    none = shutil.copytree(clean, root / "none-with-t1ce")
    for patient in patients:
        shutil.rmtree(none / patient.name / "study-1" / "t1ce")
    nifti = generate_site(root / "nifti", 2, 4, fmt="nifti", spec=SPEC, seed=5)
    next(nifti.rglob("*_flair.nii.gz")).unlink()
    return {"all": clean, "some": some, "none": none, "nifti": nifti}


def test_every_contrast_present_gives_no_contrast_finding(contrast_sites: dict[str, Path]) -> None:
    report = check_site_data(contrast_sites["all"], "tumour", config=MRI, contrasts=WANTED)

    assert report.ok, report.blocking
    assert report.contrasts == {c: {"patients-with": 6, "patients-without": 0} for c in WANTED}
    assert not [w for w in report.warnings if "contrast" in w]


def test_a_contrast_missing_for_some_patients_warns_with_the_count(contrast_sites: dict[str, Path]) -> None:
    report = check_site_data(contrast_sites["some"], "tumour", config=MRI, contrasts=WANTED)

    assert report.ok, report.blocking  # the other four patients still train
    assert report.contrasts["flair"] == {"patients-with": 4, "patients-without": 2}
    assert report.contrasts["t1ce"] == {"patients-with": 6, "patients-without": 0}
    assert [w for w in report.warnings if w.startswith("contrast ")] == [
        "contrast flair: missing for 2 of 6 patients; their studies without it are skipped, so they neither "
        "train nor evaluate"
    ]
    assert report.patients == 4


def test_a_contrast_missing_for_every_patient_blocks(contrast_sites: dict[str, Path]) -> None:
    report = check_site_data(contrast_sites["none"], "tumour", config=MRI, contrasts=WANTED)

    assert not report.ok
    assert report.contrasts["t1ce"] == {"patients-with": 0, "patients-without": 6}
    assert report.blocking[0].startswith(
        "contrast t1ce: missing for all 6 patients, and the run asks for t1ce, flair"
    )
    assert not any("S1P" in line for line in report.blocking + report.warnings if line.startswith("contrast"))


def test_the_nifti_loader_reports_its_cases_contrasts(contrast_sites: dict[str, Path]) -> None:
    report = check_site_data(contrast_sites["nifti"], "tumour", config=MRI, contrasts=WANTED)

    assert report.contrasts["flair"] == {"patients-with": 3, "patients-without": 1}
    assert any(w.startswith("contrast flair: missing for 1 of 4 patients") for w in report.warnings)


def test_image_folders_have_no_contrast_to_check(tmp_path: Path) -> None:
    images = generate_site(tmp_path / "png", 2, 3, fmt="png", spec=SPEC, seed=5)
    flat = MRI.model_copy(update={"image_depth": 0})

    report = check_site_data(images, "tumour", config=flat, contrasts=WANTED)

    assert report.ok and report.contrasts == {}
    assert any(w.startswith("no DICOM series or NIfTI case found") for w in report.warnings)


def test_site_check_contrasts_option_end_to_end(contrast_sites: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    args = ["--task", "tumour", "--json", str(out)]

    code, output = _site_check("--data", str(contrast_sites["some"]), "--contrasts", "T1-Gd, FLAIR", *args)
    assert code == 0, output
    report = json.loads(out.read_text())[0]
    assert report["contrasts"]["flair"] == {"patients-with": 4, "patients-without": 2}
    assert "contrasts the run asks for" in output and "contrast flair: missing for 2 of 6" in output

    code, output = _site_check("--data", str(contrast_sites["none"]), "--contrasts", "t1ce,flair", *args)
    assert code == 1 and "BLOCKED" in output and "Traceback" not in output
    assert "contrast t1ce: missing for all 6 patients" in json.loads(out.read_text())[0]["blocking"][0]

    code, output = _site_check("--data", str(contrast_sites["all"]), *args)  # default: no contrast check
    assert json.loads(out.read_text())[0]["contrasts"] == {}

    bad = CliRunner().invoke(
        app, ["site", "check", "--data", str(contrast_sites["all"]), "--contrasts", "dwi"]
    )
    assert isinstance(bad.exception, ConfigError) and "--contrasts" in str(bad.exception)


def test_site_check_reads_2d_image_folders_at_the_runs_image_depth(tmp_path: Path) -> None:
    images = generate_site(tmp_path / "png", 2, 3, fmt="png", spec=SPEC, seed=5)
    args = ["--data", str(images), "--task", "tumour", "--json", str(tmp_path / "report.json")]

    code, output = _site_check(*args)  # volumes expected (image-depth 16): no 2D image is usable
    assert code == 1 and "BLOCKED" in output
    code, output = _site_check(*args, "--image-depth", "0")
    assert code == 0, output
