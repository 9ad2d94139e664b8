"""Load and validate a site's CKD lab table (CSV) against the shared schema."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from common.data.ckd_schema import (
    FEATURE_NAMES,
    FEATURES,
    LABEL,
    LABEL_NEGATIVE,
    LABEL_POSITIVE,
    BinaryFeature,
    NumericFeature,
    OrdinalFeature,
)
from common.errors import CellIssue, DataValidationError

_MISSING = {"", "?", "na", "nan", "n/a", "null", "none"}


@dataclass
class CkdTable:
    """Validated CKD rows: features in schema order (NaN = missing) and 0/1 labels (1 = CKD)."""

    x: np.ndarray  # float32, shape (n, 24)
    y: np.ndarray  # int64, shape (n,)
    source_rows: np.ndarray  # 1-based row number of each sample in the source file
    file: str
    issues: list[CellIssue] = field(default_factory=list)
    dropped_rows: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: np.ndarray) -> CkdTable:
        """Rows `index` of this table, keeping provenance."""
        return CkdTable(self.x[index], self.y[index], self.source_rows[index], self.file)


def _parse_cell(feature, raw: str) -> tuple[float, str | None]:
    """Encode one raw cell; return (value, expectation) where expectation is set when invalid."""
    text = raw.strip().lower()
    if text in _MISSING:
        return math.nan, None
    if isinstance(feature, BinaryFeature):
        if text == feature.positive:
            return 1.0, None
        if text == feature.negative:
            return 0.0, None
        return math.nan, f"one of {feature.positive!r}, {feature.negative!r} or empty"
    try:
        value = float(text)
    except ValueError:
        return math.nan, "a number or empty"
    if not math.isfinite(value):
        return math.nan, "a finite number"
    if isinstance(feature, OrdinalFeature):
        if not any(abs(value - level) < 1e-6 for level in feature.levels):
            levels = ", ".join(f"{v:g}" for v in feature.levels)
            return math.nan, f"one of {levels}"
        return value, None
    assert isinstance(feature, NumericFeature)
    if not feature.low <= value <= feature.high:
        return math.nan, f"{feature.low:g}..{feature.high:g} {feature.unit}"
    return value, None


def load_ckd_csv(path: str | Path, *, strict: bool = True) -> CkdTable:
    """Read a CKD CSV and check it against the schema.

    Column names and categorical values are matched ignoring case and surrounding white space;
    empty cells (or '?', 'NA') are missing values. A missing column always raises
    `DataValidationError`. Bad cells (text in a numeric column, out-of-range value, unknown
    category or label) raise too when `strict`; otherwise a bad feature cell becomes missing, a row
    with a bad or missing label is dropped, and every such cell is listed in `CkdTable.issues`.
    """
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise DataValidationError(name, ["file not found (expected a CKD CSV)"])
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataValidationError(name, [f"not a readable CSV: {exc}"]) from exc
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    missing = [c for c in (*FEATURE_NAMES, LABEL) if c not in frame.columns]
    if missing:
        raise DataValidationError(
            name, [f"missing column '{c}' (expected the 24 UCI CKD features and 'class')" for c in missing]
        )

    n = len(frame)
    x = np.full((n, len(FEATURES)), np.nan, dtype=np.float32)
    y = np.full(n, -1, dtype=np.int64)
    issues: list[CellIssue] = []
    for j, feature in enumerate(FEATURES):
        for i, raw in enumerate(frame[feature.name].tolist()):
            value, expected = _parse_cell(feature, raw)
            if expected is not None:
                issues.append(CellIssue(name, i + 1, feature.name, raw, expected))
            x[i, j] = value
    labels = {LABEL_POSITIVE: 1, LABEL_NEGATIVE: 0}
    for i, raw in enumerate(frame[LABEL].tolist()):
        code = labels.get(raw.strip().lower())
        if code is None:
            issues.append(CellIssue(name, i + 1, LABEL, raw, f"'{LABEL_POSITIVE}' or '{LABEL_NEGATIVE}'"))
        else:
            y[i] = code

    if strict and issues:
        raise DataValidationError(name, issues)
    keep = y >= 0
    dropped = [int(r) for r in np.flatnonzero(~keep) + 1]
    if not keep.any():
        raise DataValidationError(name, ["no row with a valid 'class' label ('ckd' or 'notckd')"])
    rows = np.arange(1, n + 1)
    return CkdTable(x[keep], y[keep], rows[keep], name, issues, dropped)
