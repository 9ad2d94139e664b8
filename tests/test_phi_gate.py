"""The DICOM PHI gate: the PS3.15 table, its rules, pydicom's MR_small.dcm, phantom sites and load_site."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from mri_helpers import CONTRASTS, SPEC
from pydicom.data import get_testdata_file
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from fedward.client.budget import SitePrivacy
from fedward.client.dicom.gate import PhiGateError, check_dataset, check_folder
from fedward.client.dicom.profile import CLEAN_DESCRIPTORS, MODIFIED_DATES, PROFILE
from fedward.client.policy import load_policy
from fedward.client.site import load_site, phi_gate_mode
from fedward.common.config import RunConfig
from fedward.common.errors import ConfigError
from fedward.common.tasks import SiteSource
from fedward.simulations.phantoms import generate_site

CONFIG = RunConfig(task="tumour", mri_contrasts=",".join(CONTRASTS), image_size=16, image_depth=8)
POLICY = """[policy]
epsilon-cap = 8.0
delta = 1e-3
clipping-min = 0.1
clipping-max = 5.0
allowed-tasks = ["tumour"]
min-samples = 1
"""


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("phi")
    return {
        "clean": generate_site(root / "clean", 1, 4, spec=SPEC, seed=3),
        "phi": generate_site(root / "phi", 1, 4, spec=SPEC, seed=3, with_phi=True),
    }


def test_profile_table_uses_dicom_keywords_and_profile_actions() -> None:
    unknown = [k for k in PROFILE if tag_for_keyword(k) is None]
    assert unknown == []
    assert {action for action, _ in PROFILE.values()} <= set("XZDUC")
    assert not (MODIFIED_DATES | CLEAN_DESCRIPTORS) - set(PROFILE)
    assert "PatientBirthDate" not in MODIFIED_DATES and "StudyDate" in MODIFIED_DATES
    listed = ["PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "ReferringPhysicianName",
              "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
              "ImageComments", "DeviceSerialNumber", "AccessionNumber"]  # fmt: skip
    assert all(keyword in PROFILE for keyword in listed)


def test_gate_finds_phi_in_pydicom_mr_small(tmp_path: Path) -> None:
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "MR_small.dcm")
    (tmp_path / "notes.txt").write_text("ignored by the site file discovery")
    (tmp_path / "README").write_text("not DICOM either")
    report = check_folder(tmp_path)
    assert (report.files_checked, report.not_dicom, report.flagged) == (1, 1, ["MR_small.dcm"])
    assert {"name", "id", "date", "uid", "institution", "device", "free-text"} <= set(report.counts)
    keywords = {f.keyword for f in report.examples}
    assert {"PatientName", "StudyDate", "StudyInstanceUID", "InstitutionName"} <= keywords
    text = "\n".join(report.problems(limit=100)) + str(report.metrics())
    assert "CompressedSamples" not in text and "4MR1" not in text and "20040826" not in text
    assert report.metrics()["phi-files-flagged"] == 1.0


def _minimal(**extra: object) -> Dataset:
    ds = Dataset()
    ds.PatientIdentityRemoved = "YES"
    ds.PatientName, ds.PatientID = "", "P123"
    ds.StudyInstanceUID, ds.StudyDate = "2.25.1234", "20200101"
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def _kinds(ds: Dataset) -> set[tuple[str, str]]:
    return {(f.keyword, f.category) for f in check_dataset(ds, "f.dcm")}


def test_gate_rules() -> None:
    assert _kinds(_minimal()) == set()  # identity removed: pseudonyms, UIDs, dates may stay
    ds = _minimal()
    ds.PatientIdentityRemoved = "NO"
    assert _kinds(ds) == {("PatientID", "id"), ("StudyInstanceUID", "uid"), ("StudyDate", "date")}
    assert _kinds(_minimal(BurnedInAnnotation="YES")) == {("BurnedInAnnotation", "burned-in")}
    assert _kinds(_minimal(BurnedInAnnotation="NO")) == set()
    # an X date is PHI unless the file declares the modified-dates option
    assert _kinds(_minimal(SeriesDate="20200101")) == {("SeriesDate", "date")}
    assert (
        _kinds(_minimal(SeriesDate="20200101", LongitudinalTemporalInformationModified="MODIFIED")) == set()
    )
    assert _kinds(_minimal(SeriesDate="", InstitutionName="")) == set()  # empty X attributes are no PHI
    assert _kinds(_minimal(InstitutionName="St Elsewhere")) == {("InstitutionName", "institution")}
    # descriptors: a contrast name is clean, anything else free text
    assert _kinds(_minimal(SeriesDescription="T2-FLAIR")) == set()
    assert _kinds(_minimal(SeriesDescription="FLAIR Smith")) == {("SeriesDescription", "free-text")}
    ds = _minimal()
    ds.private_block(0x0029, "ACME", create=True).add_new(0x01, "LO", "x")
    assert {c for _, c in _kinds(ds)} == {"private"}
    # safety net inside sequences: a person name the table does not list, free text
    item = Dataset()
    item.NamesOfIntendedRecipientsOfResults = "Doe^John"
    item.ReferencedSOPInstanceUID = "2.25.5"
    assert _kinds(_minimal(ReferencedImageSequence=[item])) == {
        ("NamesOfIntendedRecipientsOfResults", "name")
    }
    assert _kinds(_minimal(DerivationDescription="")) == set()
    ds = _minimal()
    ds.add_new(0x00291000, "LT", "y")  # private group: counted once as private, not as free text
    assert {c for _, c in _kinds(ds)} == {"private"}


def test_phantoms_pass_by_default_and_carry_phi_on_request(sites) -> None:
    clean = check_folder(sites["clean"])
    assert clean.passed and clean.files_checked == 4 * len(CONTRASTS) * SPEC.slices + 4  # and 4 masks
    ds = pydicom.dcmread(next(sites["clean"].rglob("*.dcm")), stop_before_pixels=True)
    assert ds.PatientIdentityRemoved == "YES" and str(ds.PatientName) == ""
    phi = check_folder(sites["phi"])
    assert len(phi.flagged) == phi.files_checked - 4 == clean.files_checked - 4  # the masks are clean
    assert {"name", "id", "date", "uid", "private", "institution", "contact", "free-text"} <= set(phi.counts)


def test_load_site_blocks_phi_with_files_and_categories(sites) -> None:
    with pytest.raises(PhiGateError) as caught:
        load_site(SiteSource("site-x", sites["phi"]), CONFIG)
    message = str(caught.value)
    assert "S1P000/study-1/" in message and "carry PHI" in message
    assert "name" in message and "private" in message and "fedward site deidentify" in message
    assert "Doe^" not in message and "Springfield" not in message


def test_warn_policy_lets_the_site_load(sites, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY + 'phi-gate = "warn"\n')
    mode = phi_gate_mode(SitePrivacy(tmp_path / "state", policy))
    assert mode == "warn" and phi_gate_mode(SitePrivacy()) == "block"
    site = load_site(SiteSource("site-x", sites["phi"]), CONFIG, mode)
    assert (
        site.report["samples"] == 4
        and site.report["phi-files-flagged"] == site.report["phi-files-checked"] - 4  # masks are clean
    )


def test_policy_phi_gate_key(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    assert load_policy(policy).phi_gate == "block"
    policy.write_text(POLICY + 'phi-gate = "off"\n')
    with pytest.raises(ConfigError, match=r"policy\.phi-gate"):
        load_policy(policy)
