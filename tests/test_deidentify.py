"""`fedward site deidentify`: pydicom's MR files and phantom sites with PHI, structure, log, loading."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from datetime import date
from pathlib import Path, PurePath

import numpy as np
import pydicom
import pytest
import torch
from mri_helpers import CONTRASTS, SPEC
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from fedward.client.cli import app as site_app
from fedward.client.dicom.deidentify import Keys, deidentify_folder, load_secret
from fedward.client.dicom.gate import check_folder
from fedward.client.site import load_site
from fedward.common.config import RunConfig
from fedward.common.errors import ConfigError
from fedward.common.tasks import SiteSource, get_task
from fedward.common.training import LocalTraining, train_model
from fedward.simulations.phantoms import _uid, generate_site, render, scanner, write_dicom

SECRET = b"test-secret-0123456789abcdef"
PYDICOM_MR = ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm")
FEDWARD = str(Path(sys.executable).parent / "fedward")
CONFIG = RunConfig(task="tumour", mri_contrasts=",".join(CONTRASTS), image_size=16, image_depth=8)
SECOND_STUDY = ("S1P000", "S1P003")  # patients with a second study


def _headers(folder: Path) -> dict[PurePath, pydicom.Dataset]:
    return {p.relative_to(folder): pydicom.dcmread(p, stop_before_pixels=True) for p in folder.rglob("*.dcm")}


def _written(log: Path, source: str) -> PurePath:
    """Where the export wrote the input `source` (relative path), found through the log's keyed hash."""
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return PurePath(next(r["file"] for r in records if r["source-hash"] == Keys(SECRET).hashed(source)))


def _day(value: str) -> date:
    return date(int(value[:4]), int(value[4:6]), int(value[6:8]))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A phantom site with PHI (6 patients, two of them with a second study), its copy and headers."""
    root = tmp_path_factory.mktemp("deid")
    site = generate_site(root / "in", 1, 6, spec=SPEC, seed=3, with_phi=True)
    rng, scan = np.random.default_rng(9), scanner(1, 3)
    for patient in SECOND_STUDY:
        case = render(rng, 0, SPEC, scan)
        write_dicom(
            site / patient / "study-2", case, patient, _uid("later", patient), SPEC, scan, with_phi=True
        )
    (site / "notes.txt").write_text("Doe^S1P000 called on Monday\n")
    result = deidentify_folder(site, root / "out", SECRET)
    return site, root / "out", result


def test_secret_is_required_and_read_from_file_or_env(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"secrets\.token_hex") as caught:
        load_secret(None, environ={})
    assert "FEDWARD_SITE_SECRET" in str(caught.value)
    short = tmp_path / "short.key"
    short.write_text("abc\n")
    with pytest.raises(ConfigError, match="expected at least 16"):
        load_secret(short, environ={})
    key = tmp_path / "site.key"
    key.write_text(SECRET.decode() + "\n")
    assert (
        load_secret(key, environ={}) == SECRET == load_secret(None, {"FEDWARD_SITE_SECRET": SECRET.decode()})
    )
    result = CliRunner().invoke(
        site_app, ["deidentify", str(tmp_path), str(tmp_path.parent / "nowhere")], env={}
    )
    assert isinstance(result.exception, ConfigError) and "no site secret" in str(result.exception)


def test_pydicom_mr_files_are_deidentified_and_still_decode(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for name in PYDICOM_MR:
        shutil.copy(get_testdata_file(name), src / name)
    assert len(check_folder(src).flagged) == len(PYDICOM_MR)
    result = deidentify_folder(src, tmp_path / "out", SECRET)
    assert result.written == len(PYDICOM_MR) and result.gate is not None and result.gate.passed
    new_ids, new_dates = set(), set()
    for name in PYDICOM_MR:
        written = _written(tmp_path / "out" / "deidentify-log.jsonl", name)
        before, after = pydicom.dcmread(src / name), pydicom.dcmread(tmp_path / "out" / written)
        assert np.array_equal(before.pixel_array, after.pixel_array)
        assert str(after.PatientName) == "" and after.PatientID != before.PatientID
        assert (
            "InstitutionName" not in after and "ImageComments" not in after and "PatientWeight" not in after
        )
        assert (
            after.PatientIdentityRemoved == "YES"
            and after.LongitudinalTemporalInformationModified == "MODIFIED"
        )
        codes = [item.CodeValue for item in after.DeidentificationMethodCodeSequence]
        assert codes[0] == "113100" and "113107" in codes
        assert after.SOPInstanceUID.startswith("2.25.") and after.SOPInstanceUID.is_valid
        assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID
        assert after.SOPClassUID == before.SOPClassUID
        assert after.StudyDate != before.StudyDate
        new_ids.add(after.PatientID)
        new_dates.add(after.StudyDate)
    assert len(new_ids) == len(new_dates) == 1  # one patient: one pseudonym, one date offset
    log = (tmp_path / "out" / "deidentify-log.jsonl").read_text()
    for value in ("CompressedSamples", "4MR1", "20040826", "TOSHIBA", "1.3.6.1.4.1.5962"):
        assert value not in log
    # the same secret gives the same pseudonyms, another secret others
    again = deidentify_folder(src, tmp_path / "again", SECRET)
    other = deidentify_folder(src, tmp_path / "other", b"another-secret-0123456789")
    assert again.patients == result.patients and again.studies == result.studies
    assert not other.patients & result.patients and not other.studies & result.studies


def test_phantom_structure_dates_and_ids_are_kept(phantom) -> None:
    src, out, result = phantom
    before, after = _headers(src), _headers(out)
    keys = Keys(SECRET)
    ids = {pid: keys.patient_id(pid) for pid in {str(ds.PatientID) for ds in before.values()}}
    assert result.gate.passed and result.written == len(before) == len(after)
    assert result.skipped == [(keys.hashed("notes.txt"), "not a DICOM file")]
    names = {part for rel in before for part in rel.parts}
    assert not any(part in names or pid in part for rel in after for part in rel.parts for pid in ids)
    by_sop = {str(ds.SOPInstanceUID): ds for ds in after.values()}
    pairs = [(ds, by_sop[keys.uid(str(ds.SOPInstanceUID))]) for ds in before.values()]
    # one folder per patient / study / series, one file per instance
    tree = {(str(ds.PatientID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)): rel.parent
            for rel, ds in after.items()}  # fmt: skip
    assert all(len(rel.parts) == 4 for rel in after) and len(set(tree.values())) == len(tree)
    assert len({folder.parts[0] for folder in tree.values()}) == 6
    for field in (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "FrameOfReferenceUID",
        "PatientID",
    ):
        mapping = defaultdict(set)
        for old, new in pairs:
            mapping[str(old.get(field))].add(str(new.get(field)))
        assert all(len(v) == 1 for v in mapping.values()), field  # same original -> same new
        news = [next(iter(v)) for v in mapping.values()]
        assert len(set(news)) == len(news) and not set(news) & set(mapping), field  # distinct and changed
    assert len(result.patients) == 6 and len(result.studies) == 8 and len(result.series) == 8 * len(CONTRASTS)
    shifts: dict[str, set[int]] = defaultdict(set)
    for old, new in pairs:
        assert new.StudyDate != old.StudyDate and new.PatientIdentityRemoved == "YES"
        assert str(new.PatientName) == "" and new.PatientBirthDate == "" and "InstitutionName" not in new
        assert not any(e.tag.is_private for e in new.iterall())
        assert new.SeriesDescription in ("T1CE", "FLAIR") and "StudyDescription" not in new
        shifts[new.PatientID].add((_day(new.StudyDate) - _day(old.StudyDate)).days)
        assert new.AcquisitionDateTime[8:] == old.AcquisitionDateTime[8:]  # times kept
        assert _day(new.AcquisitionDateTime) == _day(new.StudyDate)
    assert all(len(s) == 1 for s in shifts.values())  # one offset per patient: intervals kept
    assert len({next(iter(s)) for s in shifts.values()}) > 1
    for patient in SECOND_STUDY:  # both studies of a patient: one pseudonym, interval kept
        studies = {(str(old.StudyDate), str(new.StudyDate), new.PatientID) for old, new in pairs
                   if old.PatientID == patient}  # fmt: skip
        assert len(studies) == 2 and len({pid for *_, pid in studies}) == 1
        (o1, n1, _), (o2, n2, _) = sorted(studies)
        assert (_day(o2) - _day(o1)).days == (_day(n2) - _day(n1)).days != 0


def test_manifest_and_log_carry_no_original_values(phantom) -> None:
    src, out, result = phantom
    with (out / "manifest.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    with (src / "manifest.csv").open() as handle:
        originals = list(csv.DictReader(handle))
    assert result.manifest_rows == len(rows) == 6 and result.masks == 6
    assert [r["label"] for r in rows] == [r["label"] for r in originals]
    assert all((out / r["mask"]).is_file() for r in rows)
    lines = (out / "deidentify-log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert {r["status"] for r in records} == {"written", "skipped"} and len(
        records
    ) == result.written + 1 + 6 + 1
    actions = {c["action"] for r in records for c in r.get("changes", [])}
    assert {"removed", "emptied", "pseudonymised", "date-shifted", "uid-remapped", "set"} <= actions
    text = "\n".join(lines)
    headers = _headers(src).values()
    secrets_ = {str(ds.PatientID) for ds in headers} | {str(ds.StudyInstanceUID) for ds in headers}
    secrets_ |= {str(ds.StudyDate) for ds in headers} | {"Doe^", "Springfield", "House^", "MRN-"}
    assert not [s for s in secrets_ if s in text]


def test_deidentified_phantoms_pass_the_gate_load_and_train(phantom) -> None:
    _, out, _ = phantom
    task = get_task("tumour")
    site = load_site(SiteSource("deid", out), CONFIG)  # the gate blocks by default: it passes
    assert (
        site.report["samples"] == 8 and site.report["patients"] == 6 and site.report["phi-files-flagged"] == 0
    )
    train_set, _ = task.datasets(site, {})
    net = task.build_model(CONFIG)
    before = [p.detach().clone() for p in net.parameters()]
    local = LocalTraining(epochs=1, batch_size=len(train_set), lr=0.01, optimizer="adam")
    outcome = train_model(net, train_set, task.loss, local, None)
    assert outcome.steps == 1 and np.isfinite(outcome.loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_burned_in_files_are_skipped_and_folders_checked(tmp_path: Path) -> None:
    scan = scanner(0, 0)
    case = render(np.random.default_rng(0), 1, SPEC, scan)
    write_dicom(tmp_path / "in" / "p", case, "P0001", _uid("s"), SPEC, scan, with_phi=True, burned_in=True)
    assert check_folder(tmp_path / "in").counts["burned-in"] == len(CONTRASTS) * SPEC.slices
    result = deidentify_folder(tmp_path / "in", tmp_path / "out", SECRET)
    assert result.written == 0 and len(result.skipped) == len(CONTRASTS) * SPEC.slices
    assert all("BurnedInAnnotation" in reason for _, reason in result.skipped)
    for dst in (tmp_path / "out", tmp_path / "in" / "sub"):  # not empty; inside IN
        with pytest.raises(ConfigError, match="OUT"):
            deidentify_folder(tmp_path / "in", dst, SECRET)


def test_cli_writes_the_copy(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), src / "MR_small.dcm")
    env = {**os.environ, "FEDWARD_SITE_SECRET": SECRET.decode(), "COLUMNS": "200"}
    run = subprocess.run([FEDWARD, "site", "deidentify", str(src), str(tmp_path / "out"),
                          "--log", str(tmp_path / "log.jsonl")],
                         capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "PHI gate passed" in run.stdout and "DICOM files written" in run.stdout
    assert (tmp_path / "out" / _written(tmp_path / "log.jsonl", "MR_small.dcm")).is_file()
