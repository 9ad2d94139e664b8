"""Every path a site reads stays inside its data folder; every path de-identification writes inside OUT."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from mri_helpers import CONTRASTS, SPEC, make_site

from fedward.client.data_report import check_site_data
from fedward.client.dicom.deidentify import deidentify_folder
from fedward.client.dicom.gate import check_folder
from fedward.common.config import RunConfig
from fedward.common.data.mri.files import OUTSIDE_LINK
from fedward.common.data.mri.manifest import read_manifest
from fedward.common.data.mri.site import scan_site
from fedward.common.errors import ConfigError, DataValidationError

SECRET = b"test-secret-0123456789abcdef"
CONFIG = RunConfig(task="tumour", mri_contrasts=",".join(CONTRASTS), image_size=16, image_depth=8)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return make_site(tmp_path_factory.mktemp("paths"), "dicom", patients=2)


def _site(phantom: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the phantom site and, next to it, a valid mask outside it (the sentinel)."""
    site = tmp_path / "site"
    shutil.copytree(phantom, site)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(site / "masks" / "S1P000_seg.nii.gz", outside / "secret_seg.nii.gz")
    return site, outside / "secret_seg.nii.gz"


def _point_mask(site: Path, value: str) -> None:
    lines = (site / "manifest.csv").read_text().splitlines()
    head, first, rest = lines[0], lines[1].split(","), lines[2:]
    first[head.split(",").index("mask")] = value
    (site / "manifest.csv").write_text("\n".join([head, ",".join(first), *rest]) + "\n")


def _tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def _escapes(site: Path, sentinel: Path) -> dict[str, str]:
    link = site / "masks" / "link_seg.nii.gz"
    link.symlink_to(sentinel)
    return {
        str(sentinel): "an absolute path",
        "../outside/secret_seg.nii.gz": "a path with '..'",
        "masks/link_seg.nii.gz": "a symbolic link whose target is outside",
    }


@pytest.mark.parametrize("kind", [0, 1, 2])
def test_manifest_paths_outside_are_refused_at_check_and_load(
    phantom: Path, tmp_path: Path, kind: int
) -> None:
    site, sentinel = _site(phantom, tmp_path)
    value, reason = list(_escapes(site, sentinel).items())[kind]
    _point_mask(site, value)
    report = check_site_data(site, "tumour", config=CONFIG)
    assert not report.ok
    expected = f"manifest.csv row 1, column 'mask': {reason}"
    assert any(line.startswith(expected) for line in report.blocking), report.blocking
    assert not [line for line in report.blocking if "secret" in line or "outside/" in line]  # no value echoed
    with pytest.raises(DataValidationError, match="row 1, column 'mask'"):
        scan_site(site, CONTRASTS)


def test_manifest_file_column_is_checked_too(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text(
        "patient_id,label,file\nP1,glioma,glioma/a.png\nP2,glioma,/etc/passwd\n"
    )
    with pytest.raises(DataValidationError, match=r"row 2, column 'file': an absolute path") as caught:
        read_manifest(tmp_path)
    assert len(caught.value.problems) == 1


def test_linked_files_outside_are_never_read(phantom: Path, tmp_path: Path) -> None:
    site, _ = _site(phantom, tmp_path)
    other = make_site(tmp_path / "elsewhere", "dicom", site=2, patients=1)
    extra = site / "S1P009" / "study-1"
    extra.mkdir(parents=True)
    (extra / "t1ce").symlink_to(other / "S2P000" / "study-1" / "t1ce", target_is_directory=True)
    (extra / "flair").mkdir()
    for dcm in sorted((other / "S2P000" / "study-1" / "flair").iterdir()):
        (extra / "flair" / dcm.name).symlink_to(dcm)
    before = check_folder(phantom)
    report = check_folder(site)
    assert report.files_checked == before.files_checked and report.passed
    result = scan_site(site, CONTRASTS)
    assert {s.reason for s in result.skipped} == {OUTSIDE_LINK}
    assert len(result.skipped) == SPEC.slices and len(result.samples) == 2
    out = tmp_path / "out"
    deid = deidentify_folder(site, out, SECRET)
    assert deid.written == before.files_checked - 2  # the two masks are not DICOM; no linked file read
    assert sum(1 for _, why in deid.skipped if "outside IN: not read" in why) == SPEC.slices


@pytest.mark.parametrize("kind", [0, 1, 2])
def test_deidentify_refuses_masks_outside_and_writes_nothing(
    phantom: Path, tmp_path: Path, kind: int
) -> None:
    site, sentinel = _site(phantom, tmp_path)
    value, _ = list(_escapes(site, sentinel).items())[kind]
    _point_mask(site, value)
    before = _tree(tmp_path)
    with pytest.raises(DataValidationError, match="row 1, column 'mask'"):
        deidentify_folder(site, tmp_path / "out", SECRET)
    assert _tree(tmp_path) == before  # nothing written anywhere, OUT not even made


def test_deidentify_writes_only_inside_out(phantom: Path, tmp_path: Path) -> None:
    site, _ = _site(phantom, tmp_path)
    with pytest.raises(ConfigError, match="--log"):
        deidentify_folder(site, tmp_path / "out", SECRET, log_path=site / "log.jsonl")
    assert not (site / "log.jsonl").exists() and not (tmp_path / "out").exists()
    sources = {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}
    before = _tree(tmp_path)
    result = deidentify_folder(site, tmp_path / "out", SECRET)
    assert result.gate is not None and result.gate.passed and result.masks == 2
    assert _tree(tmp_path) - before == _tree(tmp_path / "out") | {tmp_path / "out"}
    assert all(p.read_bytes() == data for p, data in sources.items())  # the source is untouched
    assert all(
        not p.is_symlink() and p.resolve().is_relative_to(tmp_path / "out") for p in _tree(tmp_path / "out")
    )
    mask = nib.load(next((tmp_path / "out" / "masks").iterdir()))
    assert np.asanyarray(mask.dataobj).shape == (SPEC.size, SPEC.size, SPEC.slices)
