"""The part of a site's data report that may leave it: data-quality counts, small ones suppressed.

Sizes that would give the exact number of training patients away (rows or files read, samples, patients)
stay at the site; the coordinator gets the noisy patient count of the statistics release instead. Every other
count is about the files (rows dropped, cells blanked, files skipped, PHI findings) and goes out only
when it is 0 or at least the site's minimum cell count.
"""

from __future__ import annotations

from collections.abc import Mapping

EXACT_SIZES = frozenset({"rows-read", "files-read", "samples", "patients", "train-patients", "num-train"})


def public_report(report: Mapping[str, float], min_cell: int) -> dict[str, float]:
    """The report's counts without exact sizes; counts in [1, min_cell) are left out (suppressed)."""
    return {
        key: float(value)
        for key, value in report.items()
        if key not in EXACT_SIZES and not 0 < float(value) < min_cell
    }
