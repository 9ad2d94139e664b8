"""Small synthetic MRI sites for the tumour tests (written once per test session)."""

from __future__ import annotations

from pathlib import Path

from simulations.phantoms import PhantomSpec, generate_site

SPEC = PhantomSpec(size=32, slices=8, contrasts=("t1ce", "flair"))
CONTRASTS = SPEC.contrasts


def make_site(root: Path, fmt: str, site: int = 1, patients: int = 6) -> Path:
    """`root/<fmt>-<site>` with `patients` phantom cases (site 1: reversed instance numbers, slope 0.5)."""
    return generate_site(root / f"{fmt}-{site}", site, patients, fmt=fmt, spec=SPEC, seed=3)
