"""Strong label skew for experiments: Dirichlet partitions that the default minimum site size refuses.

`prepare_ckd_sites` asks flwr-datasets for at least 20 rows per site; at α = 0.1 over 5 sites the CKD
table (400 rows, two classes) almost never allows that in the partitioner's 10 draws. Here the
minimum is smaller and the draw seed moves on until a partition is found; the folders have the same
layout as `prepare_ckd_sites` (site-<i>/{train,test}.csv, rows verbatim, test split stratified).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedward.common.data.ckd import load_ckd_csv
from fedward.common.data.partition import partition_indices
from fedward.common.datasets import ckd_csv_path
from fedward.common.errors import ConfigError
from fedward.simulations.prepare import write_ckd_sites


def dirichlet_parts(
    labels: np.ndarray, num_sites: int, alpha: float, seed: int, *, min_rows: int = 10, tries: int = 50
) -> tuple[list[np.ndarray], int]:
    """Row indices per site and the draw seed that produced them (the first from `seed` on that works)."""
    for draw in range(seed, seed + tries):
        try:
            return partition_indices(
                labels, num_sites, "dirichlet", alpha=alpha, seed=draw, min_rows=min_rows
            ), draw
        except ValueError:  # no partition with min_rows per site in the partitioner's draws
            continue
    raise ConfigError(f"no Dirichlet({alpha}) partition into {num_sites} sites of >= {min_rows} rows")


def prepare_skewed_ckd_sites(
    out_dir: Path,
    num_sites: int,
    alpha: float,
    *,
    seed: int = 0,
    first_draw: int | None = None,
    test_fraction: float = 0.2,
    min_rows: int = 10,
) -> tuple[list[Path], int]:
    """Write `out_dir/site-<i>/{train,test}.csv`; return the folders and the draw seed used.

    Partition draws are tried from `first_draw` (default `seed`) on; `seed` also seeds the test split.
    """
    labels = load_ckd_csv(ckd_csv_path(), strict=False).y
    start = seed if first_draw is None else first_draw
    parts, draw = dirichlet_parts(labels, num_sites, alpha, start, min_rows=min_rows)
    return write_ckd_sites(out_dir, parts, test_fraction=test_fraction, seed=seed), draw
