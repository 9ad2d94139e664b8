"""Damaged files are skipped one by one with their reason; a site whose data does not load refuses the
run and the federation goes on with the others; a partition that cannot be drawn says what would."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from flower_fakes import flower_identity  # noqa: F401 (fixture)
from flwr.app import ConfigRecord, Context, Message, RecordDict
from inprocess_grid import FIRST_NODE, InProcessGrid, ckd_run_config, run_server
from mri_helpers import CONTRASTS, SPEC, make_site
from PIL import Image
from typer.testing import CliRunner

from fedward.cli import app
from fedward.client.app import app as client_app
from fedward.client.data_report import check_site_data
from fedward.client.mods import SITE_DATA_ERROR, SITE_ERROR
from fedward.common.config import RunConfig
from fedward.common.data.ckd import load_ckd_csv
from fedward.common.data.mri.sample import CLASSES, NO_TUMOUR
from fedward.common.data.partition import PartitionImpossible, partition_indices
from fedward.common.datasets import ckd_csv_path
from fedward.common.errors import ConfigError
from fedward.simulations.phantoms import PhantomSpec, generate_site
from fedward.simulations.prepare import prepare_ckd_sites
from fedward.simulations.runner import run_simulation

MRI = RunConfig(mri_contrasts=",".join(CONTRASTS), image_size=16, image_depth=8)
SECRET = "st-elsewhere-oncology"
RESCALE_SLOPE = 0x00281053


def _nifti(path: Path, change) -> None:
    img = nib.load(str(path))
    array = change(np.asarray(img.dataobj, dtype=np.float32).copy())
    nib.save(nib.Nifti1Image(array, img.affine), str(path))


def _labels(site: Path) -> dict[str, str]:
    with (site / "manifest.csv").open() as handle:
        return {row["patient_id"]: row["label"] for row in csv.DictReader(handle)}


def _set(value: float, *index: int):
    def change(array: np.ndarray) -> np.ndarray:
        array[index] = value
        return array

    return change


def test_damaged_nifti_volumes_are_skipped_per_file_with_their_reason(tmp_path: Path) -> None:
    site = make_site(tmp_path, "nifti", patients=8)
    labels = _labels(site)
    tumour = next(p for p, label in labels.items() if label != CLASSES[NO_TUMOUR])
    cases = [p for p in sorted(labels) if p != tumour]
    _nifti(site / cases[0] / f"{cases[0]}_flair.nii.gz", _set(np.nan, 3, 3, 3))
    _nifti(site / cases[1] / f"{cases[1]}_t1ce.nii.gz", _set(np.inf, 0, 0, 0))
    _nifti(site / cases[2] / f"{cases[2]}_t1ce.nii.gz", lambda a: np.zeros_like(a))  # blank
    _nifti(site / cases[3] / f"{cases[3]}_flair.nii.gz", lambda a: np.stack([a, a], axis=-1))  # 4D
    _nifti(site / cases[4] / f"{cases[4]}_seg.nii.gz", _set(np.nan, 1, 1, 1))
    _nifti(site / tumour / f"{tumour}_seg.nii.gz", lambda a: np.zeros_like(a))  # no tumour voxel

    report = check_site_data(site, "tumour", config=MRI)

    reasons = {line.split(": skipped, ")[0]: line.split(": skipped, ")[1] for line in report.skipped}
    assert "non-finite voxel" in reasons[f"{cases[0]}/{cases[0]}_flair.nii.gz"]
    assert "non-finite voxel" in reasons[f"{cases[1]}/{cases[1]}_t1ce.nii.gz"]
    assert "same intensity everywhere" in reasons[f"{cases[2]}/{cases[2]}_t1ce.nii.gz"]
    assert "expected one 3D volume" in reasons[f"{cases[3]}/{cases[3]}_flair.nii.gz"]
    assert reasons[f"{cases[4]}/{cases[4]}_seg.nii.gz"].startswith("mask unusable: 1 non-finite")
    assert "empty mask" in reasons[f"{tumour}/{tumour}_seg.nii.gz"]
    assert report.ok and report.patients == 4  # a bad mask leaves the case, without it, for classification
    segmentation = check_site_data(site, "tumour-seg", config=MRI)
    assert segmentation.ok and segmentation.patients == 2  # the cases without a usable mask drop out


def test_damaged_dicom_slices_and_images_are_skipped(tmp_path: Path) -> None:
    site = generate_site(tmp_path / "dicom", 1, 4, spec=SPEC, seed=5)
    slices = sorted(site.rglob("*.dcm"))
    for path, slope in ((slices[0], "NaN"), (slices[-1], "steep")):
        ds = pydicom.dcmread(path)
        ds[RESCALE_SLOPE] = pydicom.DataElement(RESCALE_SLOPE, "LO", slope)  # not a (finite) number
        ds.save_as(path, enforce_file_format=True)
    images = generate_site(tmp_path / "png", 2, 3, fmt="png", spec=SPEC, seed=5)
    blank = sorted(images.rglob("*.png"))[0]
    Image.fromarray(np.full((32, 32), 7, dtype=np.uint8)).save(blank)

    dicom = check_site_data(site, "tumour", config=MRI)
    png = check_site_data(images, "tumour", config=MRI.model_copy(update={"image_depth": 0}))

    assert any(slices[0].name in line and "not a finite number" in line for line in dicom.skipped), (
        dicom.skipped
    )
    assert any(slices[-1].name in line and "malformed header value" in line for line in dicom.skipped)
    assert dicom.ok and png.ok
    assert any(blank.name in line and "same intensity everywhere" in line for line in png.skipped)


def test_site_check_names_the_damaged_files_without_a_traceback(tmp_path: Path) -> None:
    site = generate_site(tmp_path / "nifti", 1, 2, fmt="nifti", spec=PhantomSpec(size=16, slices=4))
    for path in site.rglob("*_flair.nii.gz"):
        _nifti(path, _set(np.nan, 2, 2, 2))
    result = CliRunner().invoke(
        app, ["site", "check", "--data", str(site), "--task", "tumour", "--json", str(tmp_path / "r.json")]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    blocking = json.loads((tmp_path / "r.json").read_text())[0]["blocking"]
    assert "no usable sample for tumour" in blocking
    assert any("S1P000_flair.nii.gz" in line and "non-finite" in line for line in blocking)


def test_an_impossible_dirichlet_partition_says_what_would_work() -> None:
    labels = load_ckd_csv(ckd_csv_path(), strict=False).y
    with pytest.raises(PartitionImpossible) as failed:
        partition_indices(labels, 7, "dirichlet", alpha=0.3, seed=1)
    message = str(failed.value)
    assert isinstance(failed.value, ConfigError) and isinstance(failed.value, ValueError)  # retries catch it
    assert "7 sites" in message and "at least 20 rows" in message and "\n" not in message
    assert "these work: 6 sites, alpha 0.6" in message and "max number of attempts" not in message


# ----------------------------------------------------------------------- a federation with broken sites


@pytest.fixture()
def broken_sites(tmp_path: Path) -> Path:
    """Three CKD sites: site-0 intact, site-1 a single row, site-2 a garbage file at a secret path."""
    root = tmp_path / SECRET
    prepare_ckd_sites(root, 3, "iid")
    one = root / "site-1"
    rows = pd.read_csv(one / "train.csv", dtype=str, keep_default_na=False)
    for f in one.glob("*.csv"):
        f.unlink()
    rows.iloc[:1].to_csv(one / "labs.csv", index=False)
    for f in (root / "site-2").glob("*.csv"):
        f.unlink()
    (root / "site-2" / "labs.csv").write_bytes(bytes(range(256)) * 40)
    return root


@pytest.mark.usefixtures("flower_identity")
def test_a_broken_site_sits_the_run_out_and_the_others_finish(broken_sites: Path, tmp_path: Path) -> None:
    config = ckd_run_config(
        broken_sites, tmp_path / "runs", **{"num-server-rounds": 2, "min-sites": 2, "run-name": "r"}
    )
    grid = InProcessGrid(config, 3)

    run_server(grid, config)

    run = tmp_path / "runs" / "r"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds-completed"] == 2 and summary["stopped"] is None
    assert set(summary["sites"]) == {"site-0", "site-1"}
    (left_out,) = json.loads((run / "config.json").read_text())["statistics-failures"]
    assert left_out.startswith("site site-2: refuses the run: its ckd data did not load (")
    errors = [r.error for r in grid.replies if r.has_error()]
    assert errors and {e.code for e in errors} == {SITE_DATA_ERROR}  # the one-row site never crashed
    assert all(e.reason.startswith("site site-2: refuses the run") for e in errors)
    assert all(SECRET not in e.reason and "/" not in e.reason for e in errors)
    rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(rounds[-1]["sites"][s].get("train") for s in ("site-0", "site-1"))
    assert all(not r["failures"] for r in rounds)  # site-2 is not asked (and refusing) every round
    to_broken = [m.metadata.message_type for m in grid.sent if m.metadata.dst_node_id == FIRST_NODE + 2]
    assert to_broken == ["query.statistics"]
    assert {m.metadata.message_type for m in grid.sent} >= {"train", "evaluate"}


@pytest.mark.usefixtures("flower_identity")
def test_a_failed_load_is_remembered_for_the_run(broken_sites: Path, tmp_path: Path) -> None:
    config = ckd_run_config(broken_sites, tmp_path / "runs")
    context = Context(
        run_id=7,
        node_id=9,
        node_config={"partition-id": 2, "num-partitions": 3},
        state=RecordDict(),
        run_config=config,
    )

    def ask() -> Message:
        query = Message(
            RecordDict({"config": ConfigRecord({})}), dst_node_id=9, message_type="query.statistics"
        )
        return client_app(query, context)

    first = ask()
    prepare_ckd_sites(tmp_path / "fixed", 3, "iid")
    for f in (tmp_path / "fixed" / "site-2").iterdir():  # the data is repaired mid-run ...
        (broken_sites / "site-2" / f.name).write_bytes(f.read_bytes())
    (broken_sites / "site-2" / "labs.csv").unlink()
    second = ask()
    assert first.error.code == second.error.code == SITE_DATA_ERROR != SITE_ERROR
    assert first.error.reason == second.error.reason  # ... but this run keeps the refusal it gave


@pytest.mark.usefixtures("flower_identity")
def test_a_tumour_site_with_only_nan_volumes_sits_the_run_out(tmp_path: Path) -> None:
    root = tmp_path / SECRET
    for i in range(2):
        generate_site(root / f"site-{i}", i, 4, spec=SPEC, seed=11)
    broken = generate_site(root / "site-2", 2, 2, fmt="nifti", spec=SPEC, seed=11)
    for path in broken.rglob("*_t1ce.nii.gz"):
        _nifti(path, _set(np.nan, 0, 0, 0))
    config = RunConfig(
        task="tumour", data_root=str(root), runs_dir=str(tmp_path / "runs"), run_name="r",
        num_server_rounds=1, min_sites=2, dp=False, image_size=16, image_depth=8,
        mri_contrasts=",".join(CONTRASTS),
    ).to_flower()  # fmt: skip
    grid = InProcessGrid(config, 3)

    run_server(grid, config)

    summary = json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())
    assert summary["rounds-completed"] == 1 and set(summary["sites"]) == {"site-0", "site-1"}
    (left_out,) = json.loads((tmp_path / "runs" / "r" / "config.json").read_text())["statistics-failures"]
    assert left_out == (
        "site site-2: refuses the run: its tumour data did not load "
        "(DataValidationError: 3 problem(s) in the site's data)"
    )


@pytest.mark.slow
def test_a_simulation_with_a_garbage_site_finishes_with_the_others_in_plain_lines(tmp_path: Path) -> None:
    root = tmp_path / SECRET
    prepare_ckd_sites(root, 3, "iid")
    (root / "site-2" / "train.csv").write_bytes(bytes(range(256)) * 40)
    config = RunConfig(
        num_server_rounds=1, min_sites=2, dp=False, data_root=str(root), runs_dir=str(tmp_path / "runs"),
        run_name="r", device="cpu",
    ).to_flower()  # fmt: skip
    shown: list[str] = []

    run_simulation(config, 3, log_file=tmp_path / "sim.log", echo=shown.append)

    run = tmp_path / "runs" / "r"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds-completed"] == 1 and set(summary["sites"]) == {"site-0", "site-1"}
    (left_out,) = json.loads((run / "config.json").read_text())["statistics-failures"]
    assert left_out.startswith("site site-2: refuses the run: its ckd data did not load (")
    output = "".join(shown)  # what the researcher sees: one line for the site, no traceback, no path
    assert f"fedward: left out of this run at the statistics step: {left_out}\n" in shown
    assert "Traceback" not in output and SECRET not in output, output
    assert all(line.startswith(("fedward: ", "round ")) for line in shown), output
    assert "Traceback" in (tmp_path / "sim.log").read_text()  # the site's detail stays in the run log
