"""The CKD loader accepts the real table and names file, row and column of every bad cell."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedward.common.data.ckd import load_ckd_csv
from fedward.common.data.ckd_schema import FEATURE_NAMES
from fedward.common.errors import DataValidationError


def _write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "site.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _set_cell(lines: list[str], row: int, column: str, value: str) -> list[str]:
    header = lines[0].split(",")
    cells = lines[row].split(",")
    cells[header.index(column)] = value
    return [*lines[:row], ",".join(cells), *lines[row + 1 :]]


def test_shipped_table_loads_with_its_three_implausible_values_blanked(ckd_csv: Path) -> None:
    table = load_ckd_csv(ckd_csv, strict=False)
    assert len(table) == 400
    assert int(table.y.sum()) == 250  # 250 ckd, 150 notckd
    assert table.x.shape == (400, 24)
    assert {(i.row, i.column) for i in table.issues} == {(22, "sod"), (62, "pot"), (129, "pot")}
    sod = FEATURE_NAMES.index("sod")
    assert np.isnan(table.x[21, sod])  # blanked, row kept


def test_strict_mode_reports_the_implausible_values(ckd_csv: Path) -> None:
    with pytest.raises(DataValidationError) as err:
        load_ckd_csv(ckd_csv, strict=True)
    text = str(err.value)
    assert "row 22, column 'sod'" in text and "100..200 mEq/L" in text


def test_missing_column_is_named(tmp_path: Path, ckd_lines: list[str]) -> None:
    header = ckd_lines[0].split(",")
    drop = header.index("hemo")
    lines = [",".join(c for j, c in enumerate(line.split(",")) if j != drop) for line in ckd_lines]
    with pytest.raises(DataValidationError, match="missing column 'hemo'"):
        load_ckd_csv(_write(tmp_path, lines))


def test_text_in_numeric_column(tmp_path: Path, ckd_lines: list[str]) -> None:
    path = _write(tmp_path, _set_cell(ckd_lines, 5, "bgr", "high"))
    with pytest.raises(DataValidationError) as err:
        load_ckd_csv(path)
    assert f"{path}: row 5, column 'bgr': got 'high', expected a number or empty" in str(err.value)


def test_out_of_range_value(tmp_path: Path, ckd_lines: list[str]) -> None:
    path = _write(tmp_path, _set_cell(ckd_lines[:10], 3, "age", "240"))
    with pytest.raises(DataValidationError) as err:
        load_ckd_csv(path)
    assert "row 3, column 'age': got '240', expected 0..120 years" in str(err.value)


def test_unknown_category(tmp_path: Path, ckd_lines: list[str]) -> None:
    path = _write(tmp_path, _set_cell(ckd_lines[:10], 2, "appet", "excellent"))
    with pytest.raises(
        DataValidationError, match="column 'appet': got 'excellent', expected one of 'poor', 'good'"
    ):
        load_ckd_csv(path)


def test_unknown_label_drops_the_row_when_lenient(tmp_path: Path, ckd_lines: list[str]) -> None:
    path = _write(tmp_path, _set_cell(ckd_lines[:10], 4, "class", "maybe"))
    table = load_ckd_csv(path, strict=False)
    assert table.dropped_rows == [4]
    assert len(table) == 8
    with pytest.raises(DataValidationError, match="'ckd' or 'notckd'"):
        load_ckd_csv(path)


def test_case_and_white_space_are_tolerated(tmp_path: Path, ckd_lines: list[str]) -> None:
    lines = [ckd_lines[0].replace("age", " AGE ")]
    lines += [_set_cell(ckd_lines, 1, "htn", " Yes ")[1], *ckd_lines[2:6]]
    table = load_ckd_csv(_write(tmp_path, lines))
    assert table.x[0, FEATURE_NAMES.index("htn")] == 1.0
    assert table.x[0, FEATURE_NAMES.index("age")] == 48.0


def test_not_a_csv(tmp_path: Path) -> None:
    path = tmp_path / "scan.csv"
    path.write_bytes(b"\x00\x01\x02garbage")
    with pytest.raises(DataValidationError, match=str(path)):
        load_ckd_csv(path)
