"""Each datum read once (issue: redesign): a site MRI folder is listed once and each file parsed once for
both the PHI gate and the loader; the gate never reads pixel data, the loader reads each slice's once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import nibabel as nib
import pydicom
import pydicom.filereader
import pytest

import fedward.common.data.mri.folder as folder_module
from fedward.client.dicom.gate import check_folder
from fedward.client.site import load_site
from fedward.common.config import RunConfig
from fedward.common.data.mri.folder import kept_site_folder
from fedward.common.tasks import SiteSource
from fedward.simulations.phantoms import PhantomSpec, generate_site

SPEC = PhantomSpec(size=96, slices=3, contrasts=("t1ce", "flair"))  # 96² int16 slices: deferred (> 16 KB)


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Counts of folder listings, DICOM parses (per file), deferred pixel reads and NIfTI opens."""
    counts: Counter = Counter()
    listing, parse = folder_module.list_site_files, pydicom.dcmread
    deferred, load = pydicom.filereader.read_deferred_data_element, nib.load

    def list_counted(root: Path):  # type: ignore[no-untyped-def]
        counts["listings"] += 1
        return listing(root)

    def parse_counted(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        counts[("parse", str(path))] += 1
        return parse(path, *args, **kwargs)

    def deferred_counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        counts["pixel reads"] += 1
        return deferred(*args, **kwargs)

    def load_counted(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        counts[("nifti", str(path))] += 1
        return load(path, *args, **kwargs)

    monkeypatch.setattr(folder_module, "list_site_files", list_counted)
    monkeypatch.setattr(pydicom, "dcmread", parse_counted)
    monkeypatch.setattr(pydicom.filereader, "read_deferred_data_element", deferred_counted)
    monkeypatch.setattr(nib, "load", load_counted)
    return counts


def _config(data: Path) -> RunConfig:
    return RunConfig(task="tumour", data_root=str(data.parent), mri_contrasts="t1ce,flair", image_depth=8)


def test_a_dicom_site_is_listed_and_parsed_once_and_the_gate_reads_no_pixels(tmp_path: Path, counted) -> None:
    site = generate_site(tmp_path / "site-0", 0, 5, fmt="dicom", spec=SPEC)
    slices = sorted(p for p in site.rglob("*.dcm"))
    assert len(slices) == 5 * 2 * SPEC.slices
    with kept_site_folder(site):
        report = check_folder(site)
        assert report.passed and report.files_checked == len(slices) + 5  # the slices and the masks
        assert counted["pixel reads"] == 0  # the gate parsed headers; pixel data stayed on disk
    load_site.cache_clear()
    data = load_site(SiteSource("site-0", site, 0, 1), _config(site))
    assert len(set(data.train.patients) | set(data.test.patients)) == 5
    assert counted["listings"] == 2  # the block above, and the load's own kept reading: one each
    assert {counted[("parse", str(p))] for p in slices} == {2}  # once per reading, never twice in one
    assert counted["pixel reads"] == len(slices)  # every slice's pixels read once, by the loader
    masks = sorted(site.glob("masks/*.nii.gz"))
    assert {counted[("nifti", str(p))] for p in masks} == {2}


def test_a_nifti_site_is_opened_once_for_the_gate_and_the_loader(tmp_path: Path, counted) -> None:
    site = generate_site(tmp_path / "site-0", 0, 4, fmt="nifti", spec=SPEC)
    load_site.cache_clear()
    load_site(SiteSource("site-0", site, 0, 1), _config(site))
    files = sorted(site.rglob("*.nii.gz"))
    assert files and {counted[("nifti", str(p))] for p in files} == {1}
    assert counted["listings"] == 1


def test_a_scan_without_the_gate_still_parses_each_file_once(tmp_path: Path, counted) -> None:
    """The loaders alone (baselines, `site check` of a table-free folder) keep their own one reading."""
    from fedward.common.data.mri.site import scan_site

    site = generate_site(tmp_path / "site-0", 0, 3, fmt="dicom", spec=SPEC)
    scan = scan_site(site, ("t1ce", "flair"))
    slices = sorted(site.rglob("*.dcm"))
    assert len(scan.samples) == 3 and counted["listings"] == 1
    assert {counted[("parse", str(p))] for p in slices} == {1}
