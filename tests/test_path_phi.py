"""Paths and non-DICOM metadata are PHI: the gate flags them without naming them, deidentify drops them."""

from __future__ import annotations

import csv
import json
from pathlib import Path, PurePath

import nibabel as nib
import numpy as np
import pytest
from mri_helpers import SPEC, make_site
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from fedward.client.dicom.deidentify import deidentify_folder
from fedward.client.dicom.gate import check_folder
from fedward.client.dicom.text_rules import path_rules, text_rules
from fedward.simulations.phantoms import _uid, render, scanner, write_dicom

SECRET = b"test-secret-0123456789abcdef"
MRN, DAY = "4412345678", "20200131"
ORIGINALS = ("Doe", "John", "DOE", "JOHN", MRN, DAY, "2020-01-31")  # names, numbers, dates of the raw tree
MASK = "masks/Doe_John_20200131_seg.nii.gz"


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """A PACS-like export: folders and files named after the patient, the MRN and the study date, and a
    mask whose NIfTI header names them too."""
    site = tmp_path_factory.mktemp("path-phi") / "in"
    scan = scanner(0, 0)
    case = render(np.random.default_rng(0), 1, SPEC, scan)
    write_dicom(
        site / f"DOE^JOHN_{MRN}" / "2020-01-31_MRI", case, MRN, _uid("doe"), SPEC, scan, with_phi=True
    )
    for path in sorted(site.rglob("IM_*.dcm")):
        path.rename(path.with_name(f"Doe_John_{path.name}"))
    mask = nib.Nifti1Image(case.mask, case.affine)
    mask.header["descrip"] = f"Doe^John {DAY}".encode()
    mask.header.extensions.append(nib.nifti1.Nifti1Extension("comment", f"MRN {MRN}".encode()))
    (site / "masks").mkdir()
    nib.save(mask, site / MASK)
    (site / "manifest.csv").write_text(f"patient_id,study_id,label,mask\n{MRN},{_uid('doe')},glioma,{MASK}\n")
    return site


@pytest.mark.parametrize(
    ("text", "rules"),
    [
        ("DOE^JOHN", ["person-name"]), ("Doe_John", ["person-name"]), ("Doe, John", ["person-name"]),
        ("2020-01-31_MRI", ["date"]), ("31.01.2020", ["date"]), ("MRN4412345678", ["long-number"]),
        ("1.2.840.113619.2.55", ["long-number"]), ("STUDY_20200131", ["date"]),
        ("S1P000", []), ("study-1", []), ("IM_0001", []), ("t1ce", []), ("AX_FLAIR", []), ("SAG_T1", []),
        ("BraTS2021_00000", []), ("BraTS-GLI-00000-000", []), ("glioma", []), ("FSL5.0", []),
        ("Siemens Healthineers", []), ("pt-qwertyuiopas", []),
    ],
)  # fmt: skip
def test_text_rules(text: str, rules: list[str]) -> None:
    assert text_rules(text) == rules


def test_generated_layouts_pass(tmp_path: Path) -> None:
    for fmt in ("dicom", "nifti", "png"):
        site = make_site(tmp_path, fmt, patients=2)
        report = check_folder(site)
        assert report.passed and report.files_checked > 0, (fmt, report.examples)
        assert not [rel for p in site.rglob("*") if (rel := p.relative_to(site)) and path_rules(rel)]


def test_gate_flags_paths_and_nifti_header_without_naming_them(raw: Path) -> None:
    report = check_folder(raw)
    assert len(report.flagged) == report.files_checked == len(SPEC.contrasts) * SPEC.slices + 1
    assert {"path-person-name", "path-date", "path-long-number", "nifti-extension", "name", "date"} <= set(
        report.counts
    )
    assert {f.keyword for f in report.examples if f.category.startswith("path-")} >= {
        "path component 1",
        "path component 2",
    }
    assert "file #1" in report.flagged[0] and f"file #{report.files_checked} under masks" in report.flagged
    text = "\n".join(report.problems(limit=100)) + str(report.metrics()) + str(report.examples)
    assert not [value for value in ORIGINALS if value in text]


def test_deidentified_copy_keeps_no_original_name_date_or_number(raw: Path) -> None:
    out = raw.parent / "out"
    result = deidentify_folder(raw, out, SECRET)
    assert (
        result.gate is not None and result.gate.passed and result.written == len(SPEC.contrasts) * SPEC.slices
    )
    paths = [p.relative_to(out).as_posix() for p in out.rglob("*")]
    manifest, log = (out / "manifest.csv").read_text(), (out / "deidentify-log.jsonl").read_text()
    for text in (*paths, manifest, log):
        assert not [value for value in ORIGINALS if value in text], text
    assert all(not path_rules(PurePath(p)) for p in paths)
    assert len({PurePath(p).parts[:3] for p in paths if p.endswith(".dcm")}) == len(SPEC.contrasts)  # series
    records = [json.loads(line) for line in log.splitlines()]
    assert all(set(r) >= {"file", "source-hash", "status"} for r in records)
    assert {r["patient"] for r in records if r.get("patient")} == result.patients
    (row,) = csv.DictReader(manifest.splitlines())
    header = nib.load(out / row["mask"]).header
    assert header["descrip"].item() == b"" and len(header.extensions) == 0
    assert (out / row["mask"]).is_file() and row["patient_id"] in result.patients


def test_nifti_and_image_metadata(tmp_path: Path) -> None:
    nifti = make_site(tmp_path, "nifti", patients=2)
    volume = next(nifti.rglob("*_t1ce.nii.gz"))
    image = nib.load(volume)
    image = nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine)
    image.header["aux_file"] = b"Doe^Jane"
    image.header["intent_name"] = b"MRN 4412345"
    nib.save(image, volume)
    report = check_folder(nifti)
    assert {(f.keyword, f.category) for f in report.examples} == {
        ("nifti aux_file", "name"),
        ("nifti intent_name", "id"),
    }
    pngs = make_site(tmp_path, "png", patients=2)
    png, jpeg = sorted(pngs.rglob("*.png"))[:2]
    text = PngInfo()
    text.add_text("Comment", f"scan of Doe^Jane on {DAY}")
    text.add_text("Author", "x")
    Image.open(png).save(png, pnginfo=text)
    exif = Image.Exif()
    exif[0x013B], exif[0x0132] = "House", "2020:01:31 10:15:00"  # Artist, DateTime
    Image.open(jpeg).convert("L").save(jpeg.with_suffix(".jpg"), exif=exif)
    jpeg.unlink()
    report = check_folder(pngs)
    assert {(f.keyword, f.category) for f in report.examples} == {
        ("image text Comment", "name"), ("image text Comment", "date"), ("image text Author", "name"),
        ("EXIF Artist", "name"), ("EXIF DateTime", "date"),
    }  # fmt: skip
    assert "Doe" not in str(report.examples) and "House" not in str(report.examples)
