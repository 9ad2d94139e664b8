"""DICOM MR series -> volumes: one series per folder (nested study folders allowed).

Slices are ordered by ImagePositionPatient projected on the slice normal (from
ImageOrientationPatient), or by InstanceNumber when positions are missing; RescaleSlope/Intercept
are applied and MONOCHROME1 inverted. Compressed transfer syntaxes decode with pydicom (RLE) and the
pylibjpeg plugins (JPEG, JPEG-LS, JPEG 2000). Each unusable file is skipped with its reason.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import UID

from fedward.common.data.mri.files import relative
from fedward.common.data.mri.folder import dicom_dataset
from fedward.common.data.mri.manifest import Manifest
from fedward.common.data.mri.sample import (
    UNLABELLED,
    MriSample,
    ScanResult,
    SkipFile,
    Skipped,
    contrast_name,
    pixel_problem,
)
from fedward.common.data.mri.volume import load_mask, stack_channels

MR_IMAGE_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.4"}  # MR Image Storage (single-frame)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class DicomSlice:
    """One decoded MR slice and the geometry and identity tags needed to build its series."""

    path: Path
    pixels: np.ndarray  # (rows, columns), rescaled to float32
    patient_id: str
    study_uid: str
    study_id: str
    series_uid: str
    description: str
    instance: int | None
    orientation: np.ndarray | None  # 6 direction cosines
    position: np.ndarray | None  # ImagePositionPatient
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    thickness: float | None
    inverted: bool


def _floats(ds: pydicom.Dataset, keyword: str, count: int) -> np.ndarray | None:
    value = ds.get(keyword)
    if value is None:
        return None
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (count,) and np.all(np.isfinite(out)) else None


def read_slice(path: Path) -> DicomSlice:
    """Decode one file; raise SkipFile with the reason when it is not a usable MR slice."""
    ds = dicom_dataset(path)  # parsed once (pixel data deferred) when the site folder's reading is kept
    if isinstance(ds, str):
        raise SkipFile(ds)
    sop = UID(str(ds.get("SOPClassUID", "")))
    if "PixelData" not in ds and str(sop) in MR_IMAGE_SOP_CLASSES:
        raise SkipFile("MR image without pixel data (truncated file?)")
    if "PixelData" not in ds:
        raise SkipFile(f"not an image (SOP class {sop.name or 'unknown'})")
    modality = str(ds.get("Modality", ""))
    if modality != "MR":
        raise SkipFile(f"modality {modality or 'missing'}, expected MR")
    if str(sop) not in MR_IMAGE_SOP_CLASSES:
        raise SkipFile(f"SOP class {sop.name or sop} not supported (expected MR Image Storage)")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise SkipFile("multi-frame or colour image, expected one grey-level slice per file")
    syntax = ds.file_meta.get("TransferSyntaxUID", UID("")) if hasattr(ds, "file_meta") else UID("")
    try:
        pixels = np.asarray(ds.pixel_array, dtype=np.float32)
    except Exception as exc:
        raise SkipFile(f"pixel data unreadable ({syntax.name or 'unknown syntax'}: {exc})") from None
    if pixels.ndim != 2 or min(pixels.shape) < 2:
        raise SkipFile(f"pixel array of shape {pixels.shape}, expected one 2D slice")
    try:
        return _slice(ds, path, pixels)
    except (TypeError, ValueError, OverflowError) as exc:  # a header value that is not a number
        raise SkipFile(f"malformed header value ({type(exc).__name__}: {exc})") from None


def _slice(ds: pydicom.Dataset, path: Path, pixels: np.ndarray) -> DicomSlice:
    """The slice's rescaled pixels and geometry; SkipFile when they are not finite numbers."""
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if not (np.isfinite(slope) and np.isfinite(intercept)):
        raise SkipFile("RescaleSlope or RescaleIntercept is not a finite number")
    pixels = pixels * slope + intercept
    bad = int(pixels.size - np.count_nonzero(np.isfinite(pixels)))
    if bad:
        raise SkipFile(f"{bad} non-finite pixel(s) (NaN or infinity), expected finite intensities")
    spacing = _floats(ds, "PixelSpacing", 2)
    thickness = ds.get("SliceThickness")
    instance = ds.get("InstanceNumber")
    return DicomSlice(
        path=path,
        pixels=pixels,
        patient_id=str(ds.get("PatientID", "") or ""),
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        study_id=str(ds.get("StudyID", "") or ""),
        series_uid=str(ds.get("SeriesInstanceUID", "") or path.parent),
        description=str(ds.get("SeriesDescription", "") or ds.get("ProtocolName", "") or ""),
        instance=int(instance) if instance not in (None, "") else None,
        orientation=_floats(ds, "ImageOrientationPatient", 6),
        position=_floats(ds, "ImagePositionPatient", 3),
        pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing is not None else (1.0, 1.0),
        thickness=float(thickness) if thickness not in (None, "") else None,
        inverted=str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1",
    )


@dataclass
class Series:
    """An ordered stack of slices: array (i=column, j=row, k=slice) and its RAS affine."""

    folder: str
    patient_id: str
    study_uid: str
    study_id: str
    description: str
    array: np.ndarray
    affine: np.ndarray


def build_series(slices: list[DicomSlice], root: Path, skipped: list[Skipped]) -> Series | None:
    """Order, check and stack one series' slices; inconsistent slices are skipped with a reason."""
    shape = Counter(s.pixels.shape for s in slices).most_common(1)[0][0]
    keep = []
    for s in slices:
        if s.pixels.shape != shape:
            size = "x".join(map(str, s.pixels.shape))
            skipped.append(Skipped(relative(s.path, root), f"slice size {size} differs from the series' "
                                   f"{'x'.join(map(str, shape))}"))  # fmt: skip
        else:
            keep.append(s)
    first = keep[0]
    iop = first.orientation
    if iop is not None:
        for s in list(keep[1:]):
            if s.orientation is None or not np.allclose(s.orientation, iop, atol=1e-3):
                skipped.append(
                    Skipped(relative(s.path, root), "ImageOrientationPatient differs from the series'")
                )
                keep.remove(s)
    row_dir, col_dir = (iop[:3], iop[3:]) if iop is not None else (np.eye(3)[0], np.eye(3)[1])
    normal = np.cross(row_dir, col_dir)
    if all(s.position is not None for s in keep) and iop is not None:
        keep.sort(key=lambda s: float(np.dot(s.position, normal)))
        along = np.array([float(np.dot(s.position, normal)) for s in keep])
        gaps = np.diff(along)
        dz = float(np.median(gaps)) if len(gaps) else (first.thickness or 1.0)
        origin = keep[0].position
    else:
        keep.sort(key=lambda s: (s.instance is None, s.instance or 0, s.path.name))
        dz = first.thickness or 1.0
        origin = first.position if first.position is not None else np.zeros(3)
    if dz <= 0:
        dz = first.thickness or 1.0
    # pixel_array is (rows, columns); voxel order (i = column, j = row, k = slice)
    array = np.stack([s.pixels.T for s in keep], axis=-1).astype(np.float32)
    if any(s.inverted for s in keep):
        array = array.max() + array.min() - array
    dr, dc = first.pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = row_dir * dc
    lps[:3, 1] = col_dir * dr
    lps[:3, 2] = normal * dz
    lps[:3, 3] = origin
    return Series(
        folder=relative(first.path.parent, root),
        patient_id=first.patient_id,
        study_uid=first.study_uid,
        study_id=first.study_id,
        description=first.description,
        array=array,
        affine=LPS_TO_RAS @ lps,
    )


def _assign_contrasts(group: list[Series], contrasts: tuple[str, ...]) -> dict[str, Series]:
    if len(contrasts) == 1 and len(group) == 1:
        return {contrasts[0]: group[0]}
    found: dict[str, Series] = {}
    for series in group:
        name = contrast_name(series.description)
        if name in contrasts and name not in found:
            found[name] = series
    return found


def load_dicom(files: list[Path], root: Path, manifest: Manifest, contrasts: tuple[str, ...]) -> ScanResult:
    """Samples (one per study, channels = `contrasts`) from DICOM files under `root`."""
    result = ScanResult(files_read=len(files))
    by_series: dict[tuple[Path, str], list[DicomSlice]] = defaultdict(list)
    for path in files:
        try:
            s = read_slice(path)
        except SkipFile as why:
            result.skipped.append(Skipped(relative(path, root), str(why)))
            continue
        by_series[(path.parent, s.series_uid)].append(s)
    by_study: dict[tuple[str, str], list[Series]] = defaultdict(list)
    for slices in by_series.values():
        series = build_series(slices, root, result.skipped)
        if series is not None:
            by_study[(series.patient_id, series.study_uid)].append(series)
    for (patient, study_uid), group in sorted(by_study.items()):
        where = str(Path(group[0].folder).parent)
        if not patient:
            result.skipped.append(Skipped(where, "series without PatientID"))
            continue
        chosen = _assign_contrasts(group, contrasts)
        result.found(patient, chosen)
        missing = [c for c in contrasts if c not in chosen]
        if missing:
            seen = ", ".join(repr(s.description) for s in group)
            result.skipped.append(
                Skipped(where, f"missing contrast(s) {', '.join(missing)} (series: {seen})")
            )
            continue
        try:
            image, affine = _stack(chosen, contrasts)
        except SkipFile as why:
            result.skipped.append(Skipped(where, str(why)))
            continue
        entry = manifest.lookup(patient, study_uid, group[0].study_id)
        label = entry.label if entry is not None else UNLABELLED
        mask = None
        if entry is not None and entry.mask is not None:
            mask = load_mask(entry.mask, image.shape[1:], root, result.skipped, label)
        result.samples.append(MriSample(patient, label, image, where, affine, mask))
    return result


def _stack(chosen: dict[str, Series], contrasts: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The study's series as channels on the first one's grid; SkipFile names a damaged series."""
    for name in contrasts:
        series = chosen[name]
        problem = pixel_problem(series.array)
        if problem is None and not np.all(np.isfinite(series.affine)):
            problem = "slice geometry is not finite"
        if problem:
            raise SkipFile(f"series {series.folder} ({name}): {problem}")
    return stack_channels([(chosen[c].array, chosen[c].affine) for c in contrasts])
