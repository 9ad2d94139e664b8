"""Lay out simulated sites on disk: one folder per site with its own train and test CSV."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedward.common.data.ckd import load_ckd_csv
from fedward.common.data.partition import RESAMPLE_ROWS_PER_SITE, partition_indices
from fedward.common.data.split import stratified_split
from fedward.common.datasets import ckd_csv_path


def prepare_ckd_sites(
    out_dir: str | Path,
    num_sites: int,
    partition: str,
    *,
    alpha: float = 0.5,
    test_fraction: float = 0.2,
    seed: int = 0,
    source: Path | None = None,
    rows_per_site: int = RESAMPLE_ROWS_PER_SITE,
) -> list[Path]:
    """Partition the CKD table into `out_dir/site-<i>/{train,test}.csv`.

    Rows are copied verbatim from the source file (a site sees the same raw format a hospital
    export has); each site's held-out split is stratified by label. `partition = "resample"` gives
    each site `rows_per_site` rows drawn from the whole table (synthetic, rows repeat across sites:
    for scale tests only, see common/data/partition.py).
    """
    source = source or ckd_csv_path()
    labels = load_ckd_csv(source, strict=False).y
    parts = partition_indices(
        labels, num_sites, partition, alpha=alpha, seed=seed, rows_per_site=rows_per_site
    )
    return write_ckd_sites(Path(out_dir), parts, test_fraction=test_fraction, seed=seed, source=source)


def write_ckd_sites(
    out_dir: Path, parts: list, *, test_fraction: float = 0.2, seed: int = 0, source: Path | None = None
) -> list[Path]:
    """Write one folder per partition (row indices into the validated table) with its own split."""
    source = source or ckd_csv_path()
    raw = pd.read_csv(source, dtype=str, keep_default_na=False)
    table = load_ckd_csv(source, strict=False)
    folders = []
    for i, part in enumerate(parts):
        rows = table.source_rows[part] - 1
        train, test = stratified_split(rows, table.y[part], test_fraction, seed)
        folder = out_dir / f"site-{i}"
        folder.mkdir(parents=True, exist_ok=True)
        raw.iloc[rows[train]].to_csv(folder / "train.csv", index=False)
        raw.iloc[rows[test]].to_csv(folder / "test.csv", index=False)
        folders.append(folder)
    return folders
