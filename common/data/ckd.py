"""Load and validate a site's CKD lab table (CSV) against the shared schema."""

from __future__ import annotations

import csv
import io
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedward.common.data.ckd_aliases import code_key
from fedward.common.data.ckd_harmonise import SCHEMA, ColumnPlan, Layout, plan_columns, unit_hint
from fedward.common.data.ckd_mapping import MAPPING_FILE_NAME, SiteMapping, load_mapping
from fedward.common.data.ckd_schema import (
    FEATURES,
    LABEL,
    LABEL_NEGATIVE,
    LABEL_POSITIVE,
    BinaryFeature,
    Feature,
    NumericFeature,
    OrdinalFeature,
)
from fedward.common.data.ckd_units import schema_unit
from fedward.common.errors import CellIssue, DataValidationError

_MISSING = {"", "?", "na", "nan", "n/a", "null", "none"}
ROW = "(row)"  # CellIssue.column of a problem with a whole row
_DECIMAL_COMMA = re.compile(r"[-+]?\d*,\d+")


@dataclass
class CkdTable:
    """Validated CKD rows: features in schema order (NaN = missing) and 0/1 labels (1 = CKD).

    `harmonisation` says what was done to the file to fit the schema (columns read under another
    name, units converted, codes recoded, columns not used); it names columns, never values, and
    stays at the site like `issues`. These three file-level fields are kept by `subset`.
    """

    x: np.ndarray  # float32, shape (n, 24)
    y: np.ndarray  # int64, shape (n,)
    source_rows: np.ndarray  # 1-based row number of each sample in the source file
    file: str
    issues: list[CellIssue] = field(default_factory=list)
    dropped_rows: list[int] = field(default_factory=list)
    harmonisation: list[str] = field(default_factory=list)
    harmonised_columns: list[str] = field(default_factory=list)  # the file's names of those columns
    values_converted: int = 0  # cells whose value was converted to the schema unit or recoded

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: np.ndarray) -> CkdTable:
        """Rows `index` of this table, keeping provenance."""
        return CkdTable(
            self.x[index],
            self.y[index],
            self.source_rows[index],
            self.file,
            harmonisation=list(self.harmonisation),
            harmonised_columns=list(self.harmonised_columns),
            values_converted=self.values_converted,
        )


@dataclass(frozen=True)
class _Cell:
    value: float
    expected: str | None = None  # set when the cell is invalid
    recoded: str | None = None  # the schema value a site code was read as
    number: float | None = None  # a numeric cell as written (site unit)


def _number(text: str, decimal: str) -> float | None:
    if decimal == ",":
        text = text.replace(",", ".")
    try:
        return float(text)
    except ValueError:
        return None


def _parse_cell(feature: Feature, raw: str, plan: ColumnPlan | None = None, decimal: str = ".") -> _Cell:
    """Encode one raw cell; `expected` is set when it is invalid."""
    text = raw.strip().lower()
    if text in _MISSING:
        return _Cell(math.nan)
    recoded = None
    if plan is not None and (code := plan.codes.get(code_key(text))) is not None and code != text:
        recoded = text = code
        if not text:
            return _Cell(math.nan, recoded=recoded)
    if isinstance(feature, BinaryFeature):
        if text in (feature.positive, feature.negative):
            return _Cell(float(text == feature.positive), recoded=recoded)
        return _Cell(math.nan, f"one of {feature.positive!r}, {feature.negative!r} or empty")
    value = _number(text, decimal)
    if value is None:
        hint = ""
        if decimal == "." and _DECIMAL_COMMA.fullmatch(text):
            hint = f" (decimal mark '.'; set decimal = ',' in {MAPPING_FILE_NAME})"
        return _Cell(math.nan, f"a number or empty{hint}")
    if not math.isfinite(value):
        return _Cell(math.nan, "a finite number")
    if isinstance(feature, OrdinalFeature):
        if not any(abs(value - level) < 1e-6 for level in feature.levels):
            levels = ", ".join(f"{v:g}" for v in feature.levels)
            return _Cell(math.nan, f"one of {levels}")
        return _Cell(value, recoded=recoded)
    assert isinstance(feature, NumericFeature)
    unit = plan.unit if plan is not None and plan.unit is not None else schema_unit(feature.name)
    converted = value * unit.factor
    slack = 1e-9 * max(abs(feature.low), abs(feature.high))  # round-off of the conversion only
    if not feature.low - slack <= converted <= feature.high + slack:
        expected = f"{feature.low:g}..{feature.high:g} {feature.unit}"
        if unit.label != feature.unit:
            expected = (
                f"{feature.low / unit.factor:.4g}..{feature.high / unit.factor:.4g} {unit} (= {expected})"
            )
        return _Cell(math.nan, expected, number=value)
    return _Cell(converted, number=value)


def _read_records(path: Path, name: str, delimiter: str) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, data records (blank lines skipped) and notes on how the file was read.

    The csv module, not pandas, splits the file: pandas pads short rows and rejects the whole file
    for one long row, where a site needs each ragged row named and the rest kept.
    """
    data = path.read_bytes()
    if not data.strip():
        raise DataValidationError(
            name, ["empty file (expected a header row with the 24 CKD features and 'class')"]
        )
    if b"\x00" in data:
        raise DataValidationError(name, ["not a readable CSV: it contains NUL bytes (a binary file?)"])
    notes = []
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError as exc:
            raise DataValidationError(
                name, [f"not a readable CSV: neither UTF-8 nor Windows-1252 text ({exc})"]
            ) from exc
        notes.append(f"{name}: read as Windows-1252 text (not UTF-8)")
    reader = csv.reader(
        io.StringIO(text, newline=""), delimiter=delimiter, skipinitialspace=True, strict=True
    )
    try:
        records = [r for r in reader if r]
    except csv.Error as exc:
        raise DataValidationError(name, [f"not a readable CSV: line {reader.line_num}: {exc}"]) from exc
    header = records[0]
    if len(header) == 1:
        other = next((d for d in ";\t|," if d != delimiter and d in header[0]), None)
        if other is not None:
            shown = "tab" if other == "\t" else repr(other)
            raise DataValidationError(
                name,
                [
                    f"the header is one column: fields look separated by {shown}, expected {delimiter!r} "
                    f"(save the file as comma-separated, or set delimiter in {MAPPING_FILE_NAME})"
                ],
            )
    return header, records[1:], notes


def _ragged(name: str, row: int, record: list[str], width: int, delimiter: str) -> CellIssue:
    shown = delimiter.join(record)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return CellIssue(
        name, row, ROW, shown, f"{width} fields like the header (got {len(record)}); row not read"
    )


def load_ckd_csv(
    path: str | Path, *, strict: bool = True, mapping: SiteMapping | str | Path | None = None
) -> CkdTable:
    """Read a CKD CSV, harmonise it to the schema and check it.

    Columns are found by schema name, by a built-in alias ("creatinine", "Hb (g/L)",
    "urea_mmol_l") or by the site's `mapping` (a `SiteMapping` or the path of a `ckd-mapping.toml`);
    values are converted to the schema's units and site codes recoded before the range and
    vocabulary checks, and `CkdTable.harmonisation` says what was done. Names and categorical values
    match ignoring case and surrounding white space; empty cells (or '?', 'NA') are missing values.

    Always raises `DataValidationError` for a file that is not a readable CSV, a missing or doubled
    column, a unit fedward does not know, or a column whose values fit another unit far better than
    the declared one. Bad cells (text in a numeric column, a value out of range after conversion, an
    unknown category or label) and rows with too few or too many fields raise too when `strict`;
    otherwise a bad feature cell becomes missing, a row with a bad or missing label or the wrong
    number of fields is dropped, and every such cell or row is listed in `CkdTable.issues`.
    """
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise DataValidationError(name, ["file not found (expected a CKD CSV)"])
    if mapping is not None and not isinstance(mapping, SiteMapping):
        mapping = load_mapping(mapping)
    delimiter = mapping.delimiter if mapping is not None else ","
    decimal = mapping.decimal if mapping is not None else "."
    header, records, notes = _read_records(path, name, delimiter)
    layout = plan_columns(name, header, mapping)

    width = len(header)
    issues: list[CellIssue] = []
    rows: list[list[str] | None] = []
    for i, record in enumerate(records, start=1):
        if len(record) > width and not any(c.strip() for c in record[width:]):
            record = record[:width]  # trailing empty fields (a trailing delimiter)
        if len(record) != width:
            issues.append(_ragged(name, i, record, width, delimiter))
            rows.append(None)
        else:
            rows.append(record)
    return _encode(name, rows, layout, issues, notes, strict=strict, decimal=decimal)


def _encode(
    name: str,
    rows: list[list[str] | None],
    layout: Layout,
    issues: list[CellIssue],
    notes: list[str],
    *,
    strict: bool,
    decimal: str,
) -> CkdTable:
    n = len(rows)
    x = np.full((n, len(FEATURES)), np.nan, dtype=np.float32)
    y = np.full(n, -1, dtype=np.int64)
    lines, columns, hints = [*notes, *layout.notes], [], []
    total = 0
    for j, feature in enumerate((*FEATURES, None)):
        plan = layout.plans[feature.name if feature is not None else LABEL]
        recoded: Counter[tuple[str, str]] = Counter()
        numbers: list[float] = []
        converted = 0
        for i, row in enumerate(rows):
            if row is None:
                continue
            raw = row[plan.index]
            cell = _parse_label(raw, plan) if feature is None else _parse_cell(feature, raw, plan, decimal)
            if cell.expected is not None:
                column = plan.target if plan.source == SCHEMA else plan.header
                issues.append(CellIssue(name, i + 1, column, raw, cell.expected))
            elif cell.recoded is not None:
                recoded[(raw.strip(), cell.recoded)] += 1
            if cell.number is not None:
                numbers.append(cell.number)
                converted += cell.expected is None and plan.converts
            if feature is None:
                y[i] = int(cell.value) if cell.expected is None else -1
            else:
                x[i, j] = cell.value
        hint = unit_hint(plan, numbers)
        if hint is not None:
            hints.append(f"{name}: {hint}")
        line = plan.describe(name, converted, recoded)
        if line is not None:
            lines.append(line)
            columns.append(plan.header)
        total += converted + sum(recoded.values())

    if hints:
        raise DataValidationError(name, [*hints, *(str(i) for i in issues)])
    if strict and issues:
        raise DataValidationError(name, issues)
    keep = y >= 0
    dropped = [int(r) for r in np.flatnonzero(~keep) + 1]
    if not keep.any():
        raise DataValidationError(name, ["no row with a valid 'class' label ('ckd' or 'notckd')"])
    source_rows = np.arange(1, n + 1)
    return CkdTable(x[keep], y[keep], source_rows[keep], name, issues, dropped, lines, columns, total)


def _parse_label(raw: str, plan: ColumnPlan) -> _Cell:
    text = raw.strip().lower()
    recoded = None
    if (code := plan.codes.get(code_key(text))) is not None and code != text:
        recoded = text = code
    labels = {LABEL_POSITIVE: 1.0, LABEL_NEGATIVE: 0.0}
    if text in labels:
        return _Cell(labels[text], recoded=recoded)
    return _Cell(math.nan, f"'{LABEL_POSITIVE}' or '{LABEL_NEGATIVE}'")


def find_site_csv(data_dir: Path) -> tuple[Path, Path | None]:
    """A site folder holds `train.csv` + `test.csv` (pre-split) or exactly one CKD CSV."""
    train, test = data_dir / "train.csv", data_dir / "test.csv"
    if train.is_file() and test.is_file():
        return train, test
    csvs = sorted(data_dir.glob("*.csv"))
    if len(csvs) == 1:
        return csvs[0], None
    found = ", ".join(p.name for p in csvs) or "no CSV file"
    raise DataValidationError(
        str(data_dir), [f"expected train.csv and test.csv, or one CKD CSV (found {found})"]
    )
