"""One labelled MRI sample, the class and contrast vocabularies, and per-file skip reasons."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CLASSES = ("glioma", "meningioma", "pituitary", "notumor")
NO_TUMOUR = CLASSES.index("notumor")
UNLABELLED = -1

_CLASS_ALIASES = {
    "glioma": "glioma",
    "meningioma": "meningioma",
    "pituitary": "pituitary",
    "pituitarytumor": "pituitary",
    "pituitarytumour": "pituitary",
    "notumor": "notumor",
    "notumour": "notumor",
    "none": "notumor",
    "normal": "notumor",
    "healthy": "notumor",
}

# Series descriptions and BraTS suffixes (2018-2021 and 2023 naming) -> canonical contrast.
_CONTRAST_ALIASES = {
    "t1": "t1", "t1w": "t1", "t1n": "t1", "t1native": "t1", "t1pre": "t1",
    "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce", "t1post": "t1ce", "t1wce": "t1ce", "t1contrast": "t1ce",
    "t2": "t2", "t2w": "t2",
    "flair": "flair", "t2f": "flair", "t2flair": "flair", "t2wflair": "flair",
}  # fmt: skip


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def class_index(name: str) -> int | None:
    """Index in CLASSES of a label such as 'Glioma', 'no_tumor' or 'pituitary tumour' (None if unknown)."""
    canonical = _CLASS_ALIASES.get(_norm(name))
    return CLASSES.index(canonical) if canonical else None


def contrast_name(text: str) -> str | None:
    """Canonical contrast (t1, t1ce, t2, flair) of a series description or file suffix, if recognised."""
    return _CONTRAST_ALIASES.get(_norm(text))


def parse_contrasts(spec: str) -> tuple[str, ...]:
    """`"t1,t1ce,t2,flair"` -> canonical names, in order; unknown names raise ValueError."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    out = tuple(contrast_name(n) or "" for n in names)
    if not out or "" in out or len(set(out)) != len(out):
        raise ValueError(f"mri-contrasts must list distinct names from t1, t1ce, t2, flair; got {spec!r}")
    return out


@dataclass(frozen=True)
class Skipped:
    """A file (or series, or case) left out, and why."""

    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: skipped, {self.reason}"


class SkipFile(Exception):
    """Raised by a reader for a file it cannot use; the message is the reason."""


def pixel_problem(array: np.ndarray, smallest: int = 1) -> str | None:
    """Why an image or volume (spatial axes only) cannot be used, or None: an axis shorter than
    `smallest`, non-finite values (NaN, infinity) or a constant intensity (nothing to see)."""
    if array.size == 0 or min(array.shape) < smallest:
        size = "x".join(map(str, array.shape)) or "empty"
        return f"shape {size}, expected at least {smallest} voxel(s) along each axis"
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        return f"{bad} non-finite voxel(s) (NaN or infinity), expected finite intensities"
    if float(array.max()) == float(array.min()):
        return "the same intensity everywhere (blank), expected an image with contrast"
    return None


@dataclass
class MriSample:
    """A patient's image: channels first, then spatial axes in voxel order (i, j[, k]).

    `affine` maps voxel indices to RAS millimetres (None for 2D images); `mask` is a tumour mask on
    the same grid (non-zero = tumour) when one is known.
    """

    patient_id: str
    label: int
    image: np.ndarray
    source: str
    affine: np.ndarray | None = None
    mask: np.ndarray | None = None

    @property
    def spatial_dims(self) -> int:
        """2 for images, 3 for volumes."""
        return self.image.ndim - 1


@dataclass
class ScanResult:
    """What a loader found in a folder: usable samples and what it skipped."""

    samples: list[MriSample] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    files_read: int = 0
    files: list[Path] = field(default_factory=list)  # every image file of the site (data-set fingerprint)
    # patient -> the run's contrasts the 3D loaders recognised in any of the patient's studies or cases,
    # whether or not a study was then usable (`fedward site check --contrasts`; stays at the site)
    contrasts: dict[str, set[str]] = field(default_factory=dict)

    def found(self, patient: str, contrasts: Iterable[str]) -> None:
        """Record contrasts recognised in one of `patient`'s studies (or cases)."""
        self.contrasts.setdefault(patient, set()).update(contrasts)

    def extend(self, other: ScanResult) -> None:
        """Add another loader's findings."""
        self.samples += other.samples
        self.skipped += other.skipped
        self.files_read += other.files_read
        for patient, contrasts in other.contrasts.items():
            self.found(patient, contrasts)
