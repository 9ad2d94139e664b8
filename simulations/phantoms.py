"""Synthetic multi-site brain MRI: deterministic phantoms written as DICOM series, NIfTI or PNG folders.

A phantom has a skull, grey and white matter and two ventricles; a tumour's class sets its place,
shape and contrast (glioma: hemispheric, irregular, ring-enhancing with wide oedema; meningioma:
extra-axial at the convexity, round, strongly enhancing; pituitary: small, midline, inferior;
no tumour). Each site has its own scanner (intensity scale, bias field, noise, voxel size, slice
order, rescale slope) and its own class mix (label skew).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from fedward.common.data.mri.dicom import LPS_TO_RAS
from fedward.common.data.mri.manifest import MANIFEST_NAME
from fedward.common.data.mri.sample import CLASSES

CONTRASTS = ("t1", "t1ce", "t2", "flair")
FORMATS = ("dicom", "nifti", "png")
ANATOMIES = ("simple", "mni")
# Tissue intensities per contrast (t1, t1ce, t2, flair), relative to the scanner's scale.
TISSUE = {
    "skull": (0.90, 0.90, 0.50, 0.40),
    "grey": (0.55, 0.55, 0.50, 0.55),
    "white": (0.75, 0.75, 0.35, 0.45),
    "csf": (0.15, 0.15, 1.00, 0.10),
    "oedema": (0.45, 0.45, 0.85, 0.95),
    "glioma": (0.40, 1.00, 0.70, 0.80),
    "necrosis": (0.25, 0.30, 0.90, 0.50),
    "meningioma": (0.50, 1.10, 0.55, 0.60),
    "pituitary": (0.50, 1.05, 0.75, 0.60),
}


@dataclass(frozen=True)
class PhantomSpec:
    """Grid of the generated volumes."""

    size: int = 32
    slices: int = 12
    contrasts: tuple[str, ...] = CONTRASTS
    anatomy: str = "simple"  # "simple" (ellipsoid heads, fast) or "mni" (MNI template: anatomy.py)

    def __post_init__(self) -> None:
        if self.anatomy not in ANATOMIES:
            raise ValueError(f"PhantomSpec.anatomy must be one of {ANATOMIES}, got {self.anatomy!r}")


def phantom_slices(image_depth: int, slices: int | None = None) -> int:
    """Slices per phantom volume: `slices` if given, else the model input's depth, so that the loader does not
    resample them (the `features` model's public standardisation is computed at that depth; 12-slice phantoms
    interpolated to 16 cost the private model about 2 points of AUC, BENCHMARKS.md), or 12 for 2D PNG
    folders (`image_depth` 0)."""
    if slices is not None:
        return slices
    return image_depth if image_depth > 0 else 12


@dataclass(frozen=True)
class Scanner:
    """One site's acquisition: what makes its images differ from another site's."""

    scale: float  # intensity of a tissue with relative value 1
    bias: tuple[float, float, float]  # linear bias-field slopes along x, y, z (log scale)
    noise: float  # Rician noise sigma, relative to `scale`
    pixel_mm: float
    slice_mm: float
    slope: float  # DICOM RescaleSlope used to store the values
    reverse_files: bool  # instance numbers run against the slice position


def scanner(site: int, seed: int = 0) -> Scanner:
    """The deterministic scanner of site `site`."""
    rng = np.random.default_rng([seed, site, 7])
    return Scanner(
        scale=float(rng.choice([800.0, 1500.0, 2600.0, 4000.0])) * float(rng.uniform(0.9, 1.1)),
        bias=tuple(float(b) for b in rng.uniform(-0.3, 0.3, 3)),
        noise=float(rng.uniform(0.02, 0.05)),
        pixel_mm=float(rng.uniform(6.0, 7.5)),
        slice_mm=float(rng.uniform(10.0, 12.0)),
        slope=float(rng.choice([1.0, 0.5])),
        reverse_files=bool(site % 2),
    )


@dataclass
class Phantom:
    """A rendered case: image (C, i, j, k), whole-tumour mask (i, j, k), RAS affine."""

    label: int
    image: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    lps: np.ndarray  # the same geometry in DICOM's LPS frame


def _ellipsoid(x, y, z, centre, radii) -> np.ndarray:
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + (
        (z - centre[2]) / radii[2]
    ) ** 2 <= 1.0


def _tumour(rng: np.random.Generator, label: int, x, y, z, brain) -> dict[str, np.ndarray]:
    """Boolean maps of the tumour's tissues for class `label` (empty for no tumour)."""
    name = CLASSES[label]
    if name == "glioma":
        side = rng.choice([-1.0, 1.0])
        c = np.array([side * rng.uniform(0.25, 0.42), rng.uniform(-0.3, 0.3), rng.uniform(-0.1, 0.35)])
        solid = np.zeros_like(brain)
        for _ in range(3):  # irregular: a union of blobs
            r = rng.uniform(0.14, 0.22)
            solid |= _ellipsoid(
                x, y, z, c + rng.uniform(-0.1, 0.1, 3), (r, r * rng.uniform(0.8, 1.2), r * 1.3)
            )
        core = _ellipsoid(x, y, z, c, (0.09, 0.09, 0.12))
        oedema = _ellipsoid(x, y, z, c, (0.42, 0.45, 0.55)) & brain
        return {"oedema": oedema & ~solid, "glioma": solid & ~core & brain, "necrosis": core & brain}
    if name == "meningioma":
        angle, lift = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.7)
        d = np.array([np.cos(angle) * np.cos(lift), np.sin(angle) * np.cos(lift), np.sin(lift)])
        c = d * np.array([0.68, 0.78, 0.72])
        r = rng.uniform(0.17, 0.23)
        solid = _ellipsoid(x, y, z, c, (r, r, r * 1.2)) & brain
        return {
            "oedema": _ellipsoid(x, y, z, c, (1.3 * r, 1.3 * r, 1.5 * r)) & brain & ~solid,
            "meningioma": solid,
        }
    if name == "pituitary":
        c = np.array([rng.uniform(-0.03, 0.03), rng.uniform(0.12, 0.22), rng.uniform(-0.62, -0.5)])
        r = rng.uniform(0.16, 0.2)
        return {"pituitary": _ellipsoid(x, y, z, c, (r, r, r * 1.4))}
    return {}


def render(rng: np.random.Generator, label: int, spec: PhantomSpec, scan: Scanner) -> Phantom:
    """One case of class `label` as `scan` acquires it."""
    if spec.anatomy == "mni":
        from fedward.simulations.anatomy import render_mni

        return render_mni(rng, label, spec, scan)
    n, s = spec.size, spec.slices
    x, y, z = np.meshgrid(
        np.linspace(-1, 1, n), np.linspace(-1, 1, n), np.linspace(-0.8, 0.8, s), indexing="ij"
    )
    shift = rng.uniform(-0.04, 0.04, 3)
    head = rng.uniform(0.92, 1.04) * np.array([0.82, 0.95, 0.9])
    x, y, z = x - shift[0], y - shift[1], z - shift[2]
    outer = _ellipsoid(x, y, z, (0, 0, 0), head)
    brain = _ellipsoid(x, y, z, (0, 0, 0), head - 0.1)
    tissue = {
        "skull": outer & ~brain,
        "grey": brain,
        "white": _ellipsoid(x, y, z, (0, 0, 0.05), head * 0.62),
        "csf": _ellipsoid(x, y, z, (-0.14, 0.05, 0.12), (0.08, 0.28, 0.16))
        | _ellipsoid(x, y, z, (0.14, 0.05, 0.12), (0.08, 0.28, 0.16)),
    }
    tumour = _tumour(rng, label, x, y, z, brain & ~tissue["csf"])
    image = np.zeros((len(CONTRASTS), n, n, s), dtype=np.float32)
    for name, where in [*tissue.items(), *tumour.items()]:  # later tissues overwrite earlier ones
        image[:, where] = np.asarray(TISSUE[name], dtype=np.float32)[:, None]
    image *= rng.uniform(0.95, 1.05, (len(CONTRASTS), 1, 1, 1)).astype(np.float32)
    image = gaussian_filter(image, sigma=(0, 0.6, 0.6, 0.3))
    bias = np.exp(scan.bias[0] * x + scan.bias[1] * y + scan.bias[2] * z).astype(np.float32)
    noise = rng.normal(0, scan.noise, (2, *image.shape)).astype(np.float32)
    image = np.sqrt((image * bias + noise[0]) ** 2 + noise[1] ** 2) * scan.scale  # Rician magnitude
    mask = np.zeros((n, n, s), dtype=np.uint8)
    for where in tumour.values():
        mask[where] = 1
    keep = [CONTRASTS.index(c) for c in spec.contrasts]
    lps = np.diag([scan.pixel_mm, scan.pixel_mm, scan.slice_mm, 1.0])
    lps[:3, 3] = [-scan.pixel_mm * n / 2, -scan.pixel_mm * n / 2, -scan.slice_mm * s / 2]
    return Phantom(label, image[keep].astype(np.float32), mask, LPS_TO_RAS @ lps, lps)


def site_labels(rng: np.random.Generator, count: int, skew: float) -> list[int]:
    """Labels of a site's patients: class mix from Dirichlet(`skew`), every class at least once if room."""
    mix = rng.dirichlet(np.full(len(CLASSES), skew))
    labels = list(range(len(CLASSES)))[: min(count, len(CLASSES))]
    labels += rng.choice(len(CLASSES), size=count - len(labels), p=mix).tolist()
    return [int(v) for v in rng.permutation(labels)]


def _uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _deidentified(ds, patient: str) -> None:
    """Phantom headers as a de-identified export has them: no name, a pseudonymous id, identity removed."""
    ds.PatientName, ds.PatientID = "", patient
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic phantom: no patient data"


def _inject_phi(ds, patient: str, study_uid: str, k: int) -> None:
    """Test PHI of a real-looking export: names, birth date, address, dates, institution, free text,
    a private block. The study date follows from the study, so a patient's studies lie days apart."""
    from hashlib import sha256

    from pydicom.uid import generate_uid

    day = int(sha256(study_uid.encode()).hexdigest(), 16) % 900
    study_date = (np.datetime64("2020-01-01") + np.timedelta64(day, "D")).astype(str).replace("-", "")
    birth = 1940 + int(sha256(patient.encode()).hexdigest(), 16) % 50
    ds.PatientName, ds.PatientBirthDate = f"Doe^{patient}", f"{birth}0704"
    ds.PatientAddress, ds.OtherPatientIDs = f"{k + 1} Elm Street, Springfield", f"MRN-{patient}"
    ds.InstitutionName, ds.ReferringPhysicianName = "Springfield General Hospital", "House^Gregory"
    ds.AccessionNumber, ds.StudyDescription = f"ACC{patient}", f"MRI brain of {patient}"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
    ds.StudyTime, ds.AcquisitionDateTime = "101500", f"{study_date}1016{k % 60:02d}"
    ds.ImageComments = f"patient {patient} moved"
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid, "frame"])
    block = ds.private_block(0x0029, "FEDWARD PHANTOM", create=True)
    block.add_new(0x01, "LO", f"Doe^{patient}")


def write_dicom(
    folder: Path,
    case: Phantom,
    patient: str,
    study_uid: str,
    spec: PhantomSpec,
    scan: Scanner,
    *,
    with_phi: bool = False,
    burned_in: bool = False,
) -> None:
    """One series folder per contrast: `folder/<contrast>/IM_<n>.dcm`, MR Image Storage.

    The headers are de-identified (they pass the site's PHI gate, client/dicom/gate.py); `with_phi` writes
    identifying attributes instead and `burned_in` sets BurnedInAnnotation = YES, for tests of the gate.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

    slices = case.image.shape[-1]
    for c, contrast in enumerate(spec.contrasts):
        series_uid = _uid(study_uid, contrast)
        (folder / contrast).mkdir(parents=True, exist_ok=True)
        for k in range(slices):
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid(series_uid, k)
            ds.SOPClassUID = MRImageStorage
            ds.Modality = "MR"
            if with_phi:
                ds.PatientID = patient
                _inject_phi(ds, patient, study_uid, k)
            else:
                _deidentified(ds, patient)
            if burned_in:
                ds.BurnedInAnnotation = "YES"
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.StudyID = study_uid, series_uid, "1"
            ds.SeriesDescription, ds.SeriesNumber = contrast.upper(), c + 1
            number = slices - k if scan.reverse_files else k + 1
            ds.InstanceNumber = number
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [float(v) for v in case.lps[:3, 3] + k * case.lps[:3, 2]]
            ds.PixelSpacing = [scan.pixel_mm, scan.pixel_mm]
            ds.SliceThickness = scan.slice_mm
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = scan.slope, 0, "US"
            stored = np.clip(np.round(case.image[c, :, :, k].T / scan.slope), 0, 65535).astype(np.uint16)
            ds.Rows, ds.Columns = stored.shape
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.PixelData = stored.tobytes()
            ds.save_as(folder / contrast / f"IM_{number:04d}.dcm", enforce_file_format=True)


def write_nifti(folder: Path, case: Phantom, name: str, spec: PhantomSpec) -> None:
    """BraTS layout: `folder/<name>_<contrast>.nii.gz` and `<name>_seg.nii.gz`."""
    folder.mkdir(parents=True, exist_ok=True)
    for c, contrast in enumerate(spec.contrasts):
        nib.save(nib.Nifti1Image(case.image[c], case.affine), folder / f"{name}_{contrast}.nii.gz")
    nib.save(nib.Nifti1Image(case.mask, case.affine), folder / f"{name}_seg.nii.gz")


def write_png(folder: Path, case: Phantom, name: str, rng: np.random.Generator, count: int = 2) -> list[Path]:
    """`count` axial slices of the first contrast, through the tumour when there is one, as 8-bit PNG."""
    depth = case.image.shape[-1]
    rows = case.mask.sum(axis=(0, 1))
    candidates = np.flatnonzero(rows) if rows.any() else np.arange(depth // 3, 2 * depth // 3 + 1)
    picks = rng.choice(candidates, size=min(count, len(candidates)), replace=False)
    top = float(np.percentile(case.image[0], 99.5)) or 1.0
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in sorted(int(v) for v in picks):
        pixels = np.clip(case.image[0, :, :, k].T / top * 255, 0, 255).astype(np.uint8)
        paths.append(folder / f"{name}_{k:02d}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def generate_site(
    out_dir: Path,
    site: int,
    patients: int,
    *,
    fmt: str = "dicom",
    spec: PhantomSpec | None = None,
    skew: float = 2.0,
    seed: int = 0,
    with_phi: bool = False,
    studies: int = 1,
) -> Path:
    """Write site `site` (`patients` cases) to `out_dir` in format `fmt` with its manifest.csv.

    DICOM headers are de-identified unless `with_phi` (identifying attributes, for tests of the gate).
    `studies` > 1 (DICOM only) gives patient p 1 + p % `studies` studies (`<patient>/study-<s>`): follow-up
    scans of the same tumour class, each its own sample; `studies` = 1 writes exactly what it always did."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if studies < 1 or (studies > 1 and fmt != "dicom"):
        raise ValueError(f"studies must be 1, or more for DICOM sites only; got {studies} for {fmt}")
    spec = spec or PhantomSpec()
    rng = np.random.default_rng([seed, site])
    scan = scanner(site, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    for p, label in enumerate(site_labels(rng, patients, skew)):
        patient = f"S{site}P{p:03d}"
        case = render(rng, label, spec, scan)
        if fmt == "dicom":
            for s in range(1 + p % studies):
                if s:  # a follow-up scan: the same class, a new rendering
                    case = render(rng, label, spec, scan)
                study = _uid(seed, site, patient, *([s] if s else []))
                write_dicom(
                    out_dir / patient / f"study-{s + 1}", case, patient, study, spec, scan, with_phi=with_phi
                )
                mask = Path("masks") / (f"{patient}_{s + 1}_seg.nii.gz" if s else f"{patient}_seg.nii.gz")
                (out_dir / "masks").mkdir(exist_ok=True)
                nib.save(nib.Nifti1Image(case.mask, case.affine), out_dir / mask)
                rows.append(
                    {"patient_id": patient, "study_id": study, "label": CLASSES[label], "mask": str(mask)}
                )
        elif fmt == "nifti":
            write_nifti(out_dir / patient, case, patient, spec)
            rows.append({"patient_id": patient, "label": CLASSES[label]})
        else:
            for path in write_png(out_dir / CLASSES[label], case, patient, rng):
                rel = str(path.relative_to(out_dir)).replace("\\", "/")
                rows.append({"patient_id": patient, "label": CLASSES[label], "file": rel})
    with (out_dir / MANIFEST_NAME).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out_dir


def generate_sites(root: Path, sites: int, patients: int | Sequence[int], **kwargs) -> list[Path]:
    """`root/site-<i>` for i < `sites`, with `patients` cases each or `patients[i]` at site i (see
    generate_site for the options)."""
    counts = [patients] * sites if isinstance(patients, int) else [int(p) for p in patients]
    if len(counts) != sites:
        raise ValueError(f"patients: {len(counts)} site sizes given for {sites} sites")
    return [generate_site(root / f"site-{i}", i, counts[i], **kwargs) for i in range(sites)]
