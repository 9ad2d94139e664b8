"""MRI loaders on generated phantoms: DICOM (plain, compressed, broken files), NIfTI, image folders."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from mri_helpers import CONTRASTS, SPEC, make_site
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, RTPlanStorage, generate_uid

from fedward.common.data.mri.sample import CLASSES
from fedward.common.data.mri.site import scan_site
from fedward.common.errors import DataValidationError


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mri")
    return {fmt: make_site(root, fmt) for fmt in ("dicom", "nifti", "png")}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _manifest(site: Path) -> dict[str, str]:
    with (site / "manifest.csv").open() as handle:
        return {row["patient_id"]: row["label"] for row in csv.DictReader(handle)}


def _series_files(site: Path, patient: str = "S1P000", contrast: str = "t1ce") -> list[Path]:
    return sorted((site / patient / "study-1" / contrast).glob("*.dcm"))


def test_dicom_series_match_the_nifti_of_the_same_phantoms(sites) -> None:
    dicom, nifti = scan_site(sites["dicom"], CONTRASTS), scan_site(sites["nifti"], CONTRASTS)
    assert not dicom.skipped and len(dicom.samples) == 6
    labels = _manifest(sites["dicom"])
    for a, b in zip(dicom.samples, nifti.samples, strict=True):
        assert a.patient_id == b.patient_id and CLASSES[a.label] == labels[a.patient_id]
        assert a.image.shape == (2, SPEC.size, SPEC.size, SPEC.slices)
        # slices sorted by position though instance numbers run backwards; slope 0.5 undone
        assert np.abs(a.image - b.image).max() <= 0.5
        assert np.allclose(a.affine, b.affine) and (a.mask == b.mask).all()


def test_compressed_dicom_decodes_to_the_same_volume(sites, tmp_path) -> None:
    site = _copy(sites["dicom"], tmp_path / "site")
    files = _series_files(site)
    for path, syntax in [(files[0], RLELossless), (files[1], "1.2.840.10008.1.2.4.90")]:  # RLE, JPEG 2000
        ds = pydicom.dcmread(path)
        ds.compress(syntax)
        ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(files[1]).file_meta.TransferSyntaxUID.is_compressed
    before = scan_site(sites["dicom"], CONTRASTS).samples[0].image
    after = scan_site(site, CONTRASTS)
    assert not after.skipped
    np.testing.assert_array_equal(after.samples[0].image, before)


def test_broken_files_are_skipped_with_reasons_and_the_site_still_loads(sites, tmp_path) -> None:
    site = _copy(sites["dicom"], tmp_path / "site")
    truncated = _series_files(site)[3]
    truncated.write_bytes(truncated.read_bytes()[:-300])
    ds = pydicom.dcmread(_series_files(site, "S1P001")[0])
    ds.Modality = "CT"
    ds.save_as(site / "S1P001" / "ct.dcm", enforce_file_format=True)
    odd = pydicom.dcmread(_series_files(site, "S1P002")[2])
    odd.Rows, odd.Columns = 16, 64  # same pixel bytes, other shape
    odd.save_as(_series_files(site, "S1P002")[2], enforce_file_format=True)
    plan = Dataset()
    plan.file_meta = FileMetaDataset()
    plan.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    plan.SOPClassUID, plan.SOPInstanceUID, plan.Modality = RTPlanStorage, generate_uid(), "RTPLAN"
    plan.save_as(site / "S1P003" / "plan.dcm", enforce_file_format=True)
    (site / "notes.bin").write_bytes(b"not dicom")

    result = scan_site(site, CONTRASTS)
    reasons = {Path(s.file).name: s.reason for s in result.skipped}
    assert reasons[truncated.name].startswith("pixel data unreadable (Explicit VR Little Endian")
    assert reasons["ct.dcm"] == "modality CT, expected MR"
    assert reasons["plan.dcm"].startswith("not an image (SOP class RT Plan Storage")
    assert reasons["notes.bin"] == "not a DICOM file"
    assert any("slice size" in r for r in reasons.values())
    assert len(result.samples) == 6  # every patient still there, minus the bad slices
    assert result.samples[0].image.shape[-1] == SPEC.slices - 1


def test_monochrome1_is_inverted(sites, tmp_path) -> None:
    site = _copy(sites["dicom"], tmp_path / "site")
    for path in _series_files(site):
        ds = pydicom.dcmread(path)
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.PixelData = (4000 - ds.pixel_array.astype(np.int32)).clip(0).astype(np.uint16).tobytes()
        ds.save_as(path, enforce_file_format=True)
    plain = scan_site(sites["dicom"], CONTRASTS).samples[0].image[0]
    inverted = scan_site(site, CONTRASTS).samples[0].image[0]
    assert np.corrcoef(plain.ravel(), inverted.ravel())[0, 1] > 0.999


def test_nifti_cases_load_with_masks_and_broken_cases_are_skipped(sites, tmp_path) -> None:
    site = _copy(sites["nifti"], tmp_path / "site")
    (site / "S1P001" / "S1P001_flair.nii.gz").write_bytes(b"\x1f\x8b truncated")
    (site / "S1P002" / "S1P002_t1ce.nii.gz").unlink()
    result = scan_site(site, CONTRASTS)
    reasons = {s.file: s.reason for s in result.skipped}
    assert reasons["S1P001/S1P001_flair.nii.gz"].startswith("unreadable NIfTI")
    assert reasons["S1P002"] == "missing contrast(s) t1ce"
    assert len(result.samples) == 4
    assert all(s.mask is not None and s.mask.shape == s.image.shape[1:] for s in result.samples)
    healthy = [s.label == CLASSES.index("notumor") for s in result.samples]
    assert [not s.mask.any() for s in result.samples] == healthy


def test_image_folders_take_labels_from_folders_and_patients_from_the_manifest(sites, tmp_path) -> None:
    site = _copy(sites["png"], tmp_path / "site")
    bad = sorted(site.glob("*/*.png"))[0]
    bad.write_bytes(bad.read_bytes()[:40])
    result = scan_site(site, CONTRASTS)
    assert [s.file for s in result.skipped] == [str(bad.relative_to(site))]
    assert result.skipped[0].reason.startswith("unreadable image")
    patients = {s.patient_id for s in result.samples}
    assert len(result.samples) > len(patients) and patients <= set(_manifest(site))
    assert all(s.image.ndim == 3 and s.image.shape[0] == 1 for s in result.samples)


def test_site_with_nothing_usable_raises_a_clear_error(tmp_path) -> None:
    from fedward.common.config import RunConfig
    from fedward.common.tasks import SiteSource, get_task

    (tmp_path / "junk.dcm").write_bytes(b"\0" * 300)
    with pytest.raises(DataValidationError, match=r"junk.dcm: skipped, not a DICOM file"):
        get_task("tumour").load_site(SiteSource("site-x", tmp_path), RunConfig(task="tumour"))


def test_a_nifti_mask_on_a_flipped_grid_is_refused(sites, tmp_path) -> None:
    """Same shape, other orientation: the tumour would sit on other voxels, so the mask is not used."""
    import nibabel as nib

    site = _copy(sites["nifti"], tmp_path / "site")
    mask_file = next(site.glob("*/*_seg.nii.gz"))
    mask = nib.load(str(mask_file))
    flipped = mask.affine @ np.diag([-1.0, 1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(np.asarray(mask.dataobj), flipped), str(mask_file))
    result = scan_site(site, CONTRASTS)
    reasons = {s.file: s.reason for s in result.skipped}
    assert reasons[str(mask_file.relative_to(site))].startswith("mask orientation (NIfTI affine")
    case = mask_file.parent.name
    assert [s.mask for s in result.samples if s.source == case] == [None]  # the case stays, without a mask
    assert all(s.mask is not None for s in result.samples if s.source != case)
