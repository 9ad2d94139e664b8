"""BraTS-layout NIfTI cases: `<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz` (BraTS 2023 names too)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from fedward.common.data.mri.files import relative
from fedward.common.data.mri.manifest import Manifest
from fedward.common.data.mri.sample import UNLABELLED, MriSample, ScanResult, SkipFile, Skipped, contrast_name
from fedward.common.data.mri.volume import load_mask, read_nifti, stack_channels

SEG_NAMES = ("seg", "mask", "label")


def _split_name(path: Path) -> tuple[str, str] | None:
    stem = path.name[: -len(".nii.gz")] if path.name.lower().endswith(".gz") else path.stem
    case = path.parent.name
    if not stem.startswith(case + "_") and not stem.startswith(case + "-"):
        return None
    return case, stem[len(case) + 1 :].lower()


def load_nifti(files: list[Path], root: Path, manifest: Manifest, contrasts: tuple[str, ...]) -> ScanResult:
    """One sample per case folder; files outside the layout (e.g. masks the manifest names) are ignored."""
    cases: dict[Path, dict[str, Path]] = defaultdict(dict)
    referenced = {e.mask.resolve() for e in manifest.by_patient.values() if e.mask is not None}
    referenced |= {e.mask.resolve() for e in manifest.by_study.values() if e.mask is not None}
    for path in files:
        parts = _split_name(path)
        if parts is None or path.resolve() in referenced:
            continue
        suffix = parts[1]
        key = "seg" if suffix in SEG_NAMES else contrast_name(suffix)
        if key is not None:
            cases[path.parent][key] = path
    result = ScanResult(files_read=sum(len(v) for v in cases.values()))
    for folder, found in sorted(cases.items()):
        case = folder.name
        where = relative(folder, root)
        entry = manifest.lookup(case)
        patient = entry.patient_id if entry is not None else case
        result.found(patient, (c for c in contrasts if c in found))
        missing = [c for c in contrasts if c not in found]
        if missing:
            result.skipped.append(Skipped(where, f"missing contrast(s) {', '.join(missing)}"))
            continue
        image, affine, bad = _stack(found, contrasts, root, where)
        if bad is not None:
            result.skipped.append(bad)
            continue
        label = entry.label if entry is not None else UNLABELLED
        mask = None
        if "seg" in found:
            mask = load_mask(found["seg"], image.shape[1:], root, result.skipped, label, affine)
        result.samples.append(MriSample(patient, label, image, where, affine, mask))
    return result


def _stack(
    found: dict[str, Path], contrasts: tuple[str, ...], root: Path, where: str
) -> tuple[np.ndarray, np.ndarray, None] | tuple[None, None, Skipped]:
    """The case's contrasts on the first one's grid, or why not (naming the damaged file)."""
    volumes = []
    for name in contrasts:
        try:
            volumes.append(read_nifti(found[name]))
        except SkipFile as why:
            return None, None, Skipped(relative(found[name], root), str(why))
    try:
        image, affine = stack_channels(volumes)
    except SkipFile as why:
        return None, None, Skipped(where, str(why))
    return image, affine, None
