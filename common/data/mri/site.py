"""Read a whole MRI site folder: every loader over its own files, skips collected, nothing usable -> error."""

from __future__ import annotations

from pathlib import Path

from fedward.common.data.mri.dicom import load_dicom
from fedward.common.data.mri.files import OUTSIDE_LINK, SiteFiles, relative
from fedward.common.data.mri.folder import kept_site_folder
from fedward.common.data.mri.images import load_images
from fedward.common.data.mri.manifest import read_manifest
from fedward.common.data.mri.nifti import load_nifti
from fedward.common.data.mri.sample import ScanResult, Skipped


def scan_site(site_dir: Path, contrasts: tuple[str, ...]) -> ScanResult:
    """All samples of a site folder (DICOM series, BraTS NIfTI cases and class image folders)."""
    with kept_site_folder(site_dir) as folder:  # the PHI gate's reading when it ran first, else a new one
        return _scan(site_dir, contrasts, folder.files)


def _scan(site_dir: Path, contrasts: tuple[str, ...], files: SiteFiles) -> ScanResult:
    manifest = read_manifest(site_dir)
    result = ScanResult(
        skipped=list(manifest.skipped), files=sorted(files.dicom + files.nifti + files.images)
    )
    result.skipped += [Skipped(relative(p, site_dir), OUTSIDE_LINK) for p in files.outside]
    if files.dicom:
        result.extend(load_dicom(files.dicom, site_dir, manifest, contrasts))
    if files.nifti:
        result.extend(load_nifti(files.nifti, site_dir, manifest, contrasts))
    if files.images:
        result.extend(load_images(files.images, site_dir, manifest))
    return result
