"""Small synthetic MRI sites for the tumour tests (written once per test session)."""

from __future__ import annotations

from pathlib import Path

from fedward.simulations.phantoms import PhantomSpec, generate_site

SPEC = PhantomSpec(size=32, slices=8, contrasts=("t1ce", "flair"))
CONTRASTS = SPEC.contrasts


def make_site(root: Path, fmt: str, site: int = 1, patients: int = 6, studies: int = 1) -> Path:
    """`root/<fmt>-<site>` with `patients` phantom cases (site 1: reversed instance numbers, slope 0.5);
    `studies` > 1 (DICOM): patient p has 1 + p % `studies` studies."""
    folder = root / f"{fmt}-{site}" if studies == 1 else root / f"{fmt}-{site}-studies-{studies}"
    return generate_site(folder, site, patients, fmt=fmt, spec=SPEC, seed=3, studies=studies)
