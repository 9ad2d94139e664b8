"""The Gaussian mechanism on bounded per-patient contributions: the one-off releases a site makes outside
DP-SGD (the federated statistics). For the accountants it is one step at sampling rate q = 1."""

from __future__ import annotations

import secrets

import numpy as np


def release_sum(
    contributions: np.ndarray, bound: float, noise_multiplier: float, *, seed: int | None = None
) -> np.ndarray:
    """Sum of the rows of `contributions` (one row per patient, each clipped to L2 norm `bound`), plus
    Gaussian noise of standard deviation `noise_multiplier · bound` per coordinate (none when 0).

    The noise comes from 128 fresh bits of OS entropy; `seed` is for the seeded research switch only.
    """
    rows = np.asarray(contributions, dtype=np.float64)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    rows = rows * np.minimum(1.0, bound / np.maximum(norms, 1e-12))
    total = rows.sum(axis=0)
    if noise_multiplier <= 0:
        return total
    rng = np.random.default_rng(secrets.randbits(128) if seed is None else seed)
    return total + rng.normal(0.0, noise_multiplier * bound, total.shape)


def release_entry(noise_multiplier: float) -> tuple[float, float, int]:
    """The release as an accountant history entry: one full-batch Gaussian step."""
    return (float(noise_multiplier), 1.0, 1)
