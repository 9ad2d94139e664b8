"""Site CSVs with other names, units and codes read as the schema; corrupt rows are named one by one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedward.common.data.ckd import ROW, load_ckd_csv
from fedward.common.data.ckd_mapping import MAPPING_FILE_NAME, load_mapping
from fedward.common.data.ckd_schema import FEATURE_NAMES, FEATURES, NumericFeature
from fedward.common.data.ckd_units import UNITS, find_unit, normalise_unit
from fedward.common.errors import ConfigError, DataValidationError

_YES_NO = {"yes": "1", "no": "0", "": ""}


@pytest.fixture()
def original(ckd_csv: Path) -> pd.DataFrame:
    """The shipped table as text, the way a site export would hold it."""
    return pd.read_csv(ckd_csv, dtype=str, keep_default_na=False)


def _num(frame: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(frame[column], errors="coerce")


def _text(values: pd.Series) -> pd.Series:
    return values.map(lambda v: "" if pd.isna(v) else repr(float(v)))


def _si_export(frame: pd.DataFrame) -> pd.DataFrame:
    """The shipped rows as an SI-unit lab export with common column names and 1/0 codes."""
    out = pd.DataFrame({"Patient ID": [f"P{i:04d}" for i in range(len(frame))]})
    out["Age (years)"] = frame["age"]
    out["Blood Pressure"] = frame["bp"]
    out["Specific Gravity"] = frame["sg"]
    out["al"], out["su"], out["rbc"], out["pc"] = frame["al"], frame["su"], frame["rbc"], frame["pc"]
    out["Pus Cell Clumps"] = frame["pcc"].map({"present": "1", "notpresent": "0", "": ""})
    out["ba"] = frame["ba"]
    out["Glucose (mmol/L)"] = _text(_num(frame, "bgr") / 18.016)
    out["urea_mmol_l"] = _text(_num(frame, "bu") / 6.006)
    out["Creatinine (µmol/L)"] = _text(_num(frame, "sc") * 88.42)
    out["Na"] = frame["sod"]
    out["K [mmol/L]"] = frame["pot"]
    out["Hb (g/L)"] = _text(_num(frame, "hemo") * 10)
    out["Hct (L/L)"] = _text(_num(frame, "pcv") / 100)
    out["WBC x10^9/L"] = _text(_num(frame, "wbcc") / 1000)
    out["RBC count"] = frame["rbcc"]
    for column in ("htn", "dm", "cad"):
        out[column] = frame[column].map(_YES_NO)
    out["appet"], out["pe"], out["ane"] = frame["appet"], frame["pe"], frame["ane"]
    out["Diagnosis"] = frame["class"].map({"ckd": "1", "notckd": "0"})
    return out


def _assert_same(table, reference) -> None:
    np.testing.assert_allclose(table.x, reference.x, rtol=1e-6, atol=1e-4, equal_nan=True)
    np.testing.assert_array_equal(table.y, reference.y)
    np.testing.assert_array_equal(table.source_rows, reference.source_rows)


def test_si_export_with_common_names_loads_as_the_original_without_a_mapping(
    tmp_path: Path, ckd_csv: Path, original: pd.DataFrame
) -> None:
    path = tmp_path / "export.csv"
    _si_export(original).to_csv(path, index=False)
    reference = load_ckd_csv(ckd_csv, strict=False)
    table = load_ckd_csv(path, strict=False)
    _assert_same(table, reference)
    assert [(i.row, i.column) for i in table.issues] == [(22, "Na"), (62, "K [mmol/L]"), (129, "K [mmol/L]")]
    report = "\n".join(table.harmonisation)
    assert (
        f"{path}: column 'Creatinine (µmol/L)' read as 'sc' (built-in alias), converted µmol/L → mg/dL "
        "(÷ 88.42; unit from the column name; 383 value(s))" in report
    )
    assert "column 'urea_mmol_l' read as 'bu' (built-in alias), converted mmol/L → mg/dL (× 6.006" in report
    assert "column 'Hb (g/L)' read as 'hemo' (built-in alias), converted g/L → g/dL" in report
    assert "column 'WBC x10^9/L' read as 'wbcc' (built-in alias), converted ×10^9/L → cells/µL" in report
    assert "column 'htn' codes recoded (built-in codes): '0' → 'no' ×251, '1' → 'yes' ×147" in report
    assert "column 'Diagnosis' read as 'class' (built-in alias), codes recoded" in report
    assert f"{path}: column 'Patient ID' not used (not a CKD schema column)" in report
    assert f"{path}: column 'Age (years)' read as 'age' (built-in alias)\n" in report  # unit: the schema's
    assert "column 'al'" not in report  # read as it stands
    assert len(table.harmonised_columns) == 17
    assert table.values_converted > 2000


def test_mapping_file_declares_names_units_codes_and_separators(
    tmp_path: Path, ckd_csv: Path, original: pd.DataFrame
) -> None:
    out = original.rename(columns={"sc": "S-Creat", "hemo": "Haem", "bu": "BUN", "class": "Outcome"})
    out["S-Creat"] = _text(_num(original, "sc") * 88.42).str.replace(".", ",")
    out["Haem"] = _text(_num(original, "hemo") * 10).str.replace(".", ",")
    out["BUN"] = _text(_num(original, "bu") / 2.14393).str.replace(".", ",")  # urea nitrogen
    for column in ("sg", "bgr", "pot", "rbcc"):
        out[column] = out[column].str.replace(".", ",")
    out["appet"] = original["appet"].map({"good": "G", "poor": "P", "": ""})
    out["Outcome"] = original["class"].map({"ckd": "CKD stage 3-5", "notckd": "no CKD"})
    path = tmp_path / "export.csv"
    out.to_csv(path, index=False, sep=";")
    mapping = tmp_path / MAPPING_FILE_NAME
    mapping.write_text(
        'delimiter = ";"\ndecimal = ","\n'
        '[columns]\n"s creat" = "sc"\nHaem = "hemo"\nOutcome = "class"\n'
        '[units]\nsc = "umol/l"\nhemo = "g/L"\nbu = "mg/dL"\n'
        '[values.appet]\nG = "good"\nP = "poor"\n'
        '[values.class]\n"CKD stage 3-5" = "ckd"\n',
        encoding="utf-8",
    )
    table = load_ckd_csv(path, strict=False, mapping=mapping)
    _assert_same(table, load_ckd_csv(ckd_csv, strict=False))
    report = "\n".join(table.harmonisation)
    assert (
        "column 'S-Creat' read as 'sc' (mapping), converted µmol/L → mg/dL (÷ 88.42; unit from the mapping"
        in report
    )
    assert "column 'BUN' read as 'bu' (built-in alias), converted mg/dL BUN → mg/dL (× 2.14393" in report
    assert "column 'appet' codes recoded (mapping): 'G' → 'good' ×317, 'P' → 'poor' ×82" in report
    assert (
        "column 'Outcome' read as 'class' (mapping), codes recoded (built-in codes and mapping): "
        "'CKD stage 3-5' → 'ckd' ×250, 'no CKD' → 'notckd' ×150" in report
    )


@pytest.mark.parametrize(
    ("feature", "written", "label", "factor"),
    [
        ("sc", "µmol/L", "µmol/L", 1 / 88.42),
        ("sc", "umol / l", "µmol/L", 1 / 88.42),
        ("sc", "mcmol/L", "µmol/L", 1 / 88.42),
        ("sc", "micromol/litre", "µmol/L", 1 / 88.42),
        ("bu", "mmol/L", "mmol/L", 6.006),
        ("bu", "mg/dL BUN", "mg/dL", 6.006 / 2.8014),
        ("bu", "BUN (mmol/L)", "mmol/L", 6.006),
        ("bgr", "MMOL/L", "mmol/L", 18.016),
        ("bgr", "mg%", "mg/dL", 1.0),
        ("hemo", "g/l", "g/L", 0.1),
        ("hemo", "mmol/L", "mmol/L", 1.611),
        ("hemo", "gm%", "g/dL", 1.0),
        ("sod", "mmol/L", "mmol/L", 1.0),
        ("wbcc", "x10^9/L", "×10^9/L", 1000.0),
        ("wbcc", "×10⁹/l", "×10^9/L", 1000.0),
        ("wbcc", "10e9/L", "×10^9/L", 1000.0),
        ("wbcc", "cells/cumm", "cells/µL", 1.0),
        ("wbcc", "/mm³", "cells/µL", 1.0),
        ("rbcc", "x10^12/L", "×10^12/L", 1.0),
        ("rbcc", "millions/cmm", "millions/µL", 1.0),
        ("pcv", "L/L", "L/L", 100.0),
        ("bp", "mm/Hg", "mm Hg", 1.0),
    ],
)
def test_unit_spellings_and_factors(feature: str, written: str, label: str, factor: float) -> None:
    unit = find_unit(feature, written)
    assert unit is not None and unit.label == label
    assert unit.factor == pytest.approx(factor, rel=1e-12)


def test_unit_table_covers_every_numeric_feature_once() -> None:
    numeric = {f.name: f for f in FEATURES if isinstance(f, NumericFeature)}
    assert set(UNITS) == set(numeric)
    for name, units in UNITS.items():
        assert units[0].factor == 1.0 and units[0].label == numeric[name].unit  # the schema's own first
        keys = [(normalise_unit(u.label)[0], u.quantity) for u in units]
        assert len(set(keys)) == len(keys), f"two units of {name} read alike"


@pytest.mark.parametrize(("feature", "written"), [("hemo", "mg/L"), ("sc", "mg/dL BUN"), ("sod", "g/L")])
def test_units_that_do_not_fit_the_feature(feature: str, written: str) -> None:
    assert find_unit(feature, written) is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '[units]\nsc = "umol/dl"\n',
            "units.sc: unknown unit 'umol/dl' for 'sc' (serum creatinine); expected mg/dL",
        ),
        ('[units]\nhtn = "mg/dL"\n', "units.htn: not a numeric schema column"),
        ('[columns]\nCreat = "creatinine"\n', "columns.Creat: 'creatinine' is not a schema column"),
        ('[values.htn]\n"2" = "maybe"\n', "values.htn.\"2\": 'maybe' is not one of 'yes', 'no' or ''"),
        ('[values.sc]\nlow = "0.5"\n', "values.sc: codes can be given for categorical schema columns"),
        ('delimiter = ","\ndecimal = ","\n', "delimiter and decimal are both ','"),
        ('[colums]\na = "sc"\n', "colums: unknown key"),
        ("[units\n", "not valid TOML"),
    ],
)
def test_bad_mapping_file_names_file_and_key(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / MAPPING_FILE_NAME
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_mapping(path)
    assert str(err.value).startswith(f"site mapping {path}: ")
    assert message in str(err.value)


def _export(tmp_path: Path, frame: pd.DataFrame, name: str = "export.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_ambiguous_headers_name_file_and_columns(tmp_path: Path, original: pd.DataFrame) -> None:
    doubled = original.head(5).assign(creatinine=original["sc"].head(5))
    path = _export(tmp_path, doubled)
    with pytest.raises(DataValidationError) as err:
        load_ckd_csv(path, strict=False)
    assert err.value.file == str(path)
    assert "columns 'sc' and 'creatinine' are all read as 'sc'" in str(err.value)
    mapping = tmp_path / MAPPING_FILE_NAME
    mapping.write_text('ignore = ["Creatinine"]\n', encoding="utf-8")
    table = load_ckd_csv(path, strict=False, mapping=mapping)
    assert f"{path}: column 'creatinine' not read (ignore in {MAPPING_FILE_NAME})" in table.harmonisation

    unknown = original.head(5).rename(columns={"hemo": "Hb (mg/L)"})
    with pytest.raises(DataValidationError) as err:
        load_ckd_csv(_export(tmp_path, unknown), strict=False)
    assert (
        "column 'Hb (mg/L)': unknown unit 'mg/L' for 'hemo' (haemoglobin); expected g/dL, g/L or mmol/L"
        in str(err.value)
    )

    disagree = original.head(5).rename(columns={"sc": "creatinine_umol_l"})
    mapping.write_text('[units]\nsc = "mg/dL"\n', encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"column 'creatinine_umol_l': its name says µmol/L but"):
        load_ckd_csv(_export(tmp_path, disagree), strict=False, mapping=mapping)


def test_values_in_an_undeclared_unit_stop_the_load(tmp_path: Path, original: pd.DataFrame) -> None:
    frame = original.rename(columns={"hemo": "Hb"})
    frame["Hb"] = _text(_num(original, "hemo") * 10)  # g/L under a name without a unit
    path = _export(tmp_path, frame)
    with pytest.raises(DataValidationError) as err:
        load_ckd_csv(path, strict=False)
    assert (
        "column 'Hb': 348 of 348 values are outside 2..25 g/dL when read as g/dL, but fit g/L; "
        f'declare the unit in {MAPPING_FILE_NAME} ([units] hemo = "g/L")' in str(err.value)
    )


def test_corrupt_rows_are_each_named_and_usable_rows_kept(
    tmp_path: Path, ckd_csv: Path, original: pd.DataFrame
) -> None:
    export = _si_export(original.head(12)).drop(columns=["Patient ID"])
    export.insert(3, "Ward", "W1")  # a column the schema does not have
    header = list(export.columns)
    lines = [",".join(header)] + [",".join(row) for row in export.to_numpy().tolist()]

    def cell(row: int, column: str, value: str) -> None:
        cells = lines[row].split(",")
        cells[header.index(column)] = value
        lines[row] = ",".join(cells)

    cell(1, "Glucose (mmol/L)", "high")  # text in a numeric cell
    cell(2, "Creatinine (µmol/L)", "-50")  # negative
    cell(3, "Hb (g/L)", "400")  # 40 g/dL after conversion
    cell(4, "Diagnosis", "")  # missing label
    cell(5, "Diagnosis", "maybe")  # bad label
    lines[6] = ",".join(lines[6].split(",")[:10])  # short row
    lines[7] += ",surplus"  # long row
    lines[8] += ","  # a trailing delimiter alone is harmless
    cell(9, "Glucose (mmol/L)", "6,7")  # decimal comma in a comma file: the row turns long
    path = tmp_path / "corrupt.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    table = load_ckd_csv(path, strict=False)
    found = {(i.row, i.column): i for i in table.issues}
    assert set(found) == {
        (1, "Glucose (mmol/L)"),
        (2, "Creatinine (µmol/L)"),
        (3, "Hb (g/L)"),
        (4, "Diagnosis"),
        (5, "Diagnosis"),
        (6, ROW),
        (7, ROW),
        (9, ROW),
    }
    text = {key: str(issue) for key, issue in found.items()}
    assert text[(1, "Glucose (mmol/L)")].endswith("got 'high', expected a number or empty")
    assert text[(2, "Creatinine (µmol/L)")] == (
        f"{path}: row 2, column 'Creatinine (µmol/L)': "
        "got '-50', expected 8.842..7074 µmol/L (= 0.1..80 mg/dL)"
    )
    assert text[(3, "Hb (g/L)")].endswith("got '400', expected 20..250 g/L (= 2..25 g/dL)")
    assert text[(4, "Diagnosis")].endswith("got '', expected 'ckd' or 'notckd'")
    assert text[(5, "Diagnosis")].endswith("got 'maybe', expected 'ckd' or 'notckd'")
    assert "expected 26 fields like the header (got 10); row not read" in text[(6, ROW)]
    assert "expected 26 fields like the header (got 27); row not read" in text[(7, ROW)]
    assert f"{path}: column 'Ward' not used (not a CKD schema column)" in table.harmonisation

    assert table.dropped_rows == [4, 5, 6, 7, 9]
    assert table.source_rows.tolist() == [1, 2, 3, 8, 10, 11, 12]
    reference = load_ckd_csv(ckd_csv, strict=False).subset(np.array([0, 1, 2, 7, 9, 10, 11]))
    blanked = [(0, "bgr"), (1, "sc"), (2, "hemo")]
    expected_x = reference.x.copy()
    for i, name in blanked:
        expected_x[i, FEATURE_NAMES.index(name)] = np.nan
    np.testing.assert_allclose(table.x, expected_x, rtol=1e-6, atol=1e-4, equal_nan=True)
    np.testing.assert_array_equal(table.y, reference.y)

    with pytest.raises(DataValidationError) as err:
        load_ckd_csv(path, strict=True)
    assert len(err.value.problems) == 8


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"\n  \n", "empty file"),
        (b"age;bp;sg;al\n48;80;1.02;1\n", "fields look separated by ';', expected ','"),
        (b"age\tbp\tsg\n48\t80\t1.02\n", "fields look separated by tab"),
        (b'age,bp\n"48,80\n', "not a readable CSV"),
    ],
)
def test_unreadable_files_are_named(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "site.csv"
    path.write_bytes(content)
    with pytest.raises(DataValidationError) as err:
        load_ckd_csv(path, strict=False)
    assert err.value.file == str(path)
    assert message in str(err.value)


def test_windows_1252_export_is_read_and_said_so(tmp_path: Path, original: pd.DataFrame) -> None:
    frame = original.head(20).rename(columns={"sc": "Creatinine (µmol/L)"})
    frame["Creatinine (µmol/L)"] = _text(_num(original.head(20), "sc") * 88.42)
    path = tmp_path / "excel.csv"
    frame.to_csv(path, index=False, encoding="cp1252")
    table = load_ckd_csv(path, strict=False)
    assert table.harmonisation[0] == f"{path}: read as Windows-1252 text (not UTF-8)"
    assert table.x[0, FEATURE_NAMES.index("sc")] == pytest.approx(1.2, abs=1e-5)


def test_site_loader_reads_the_mapping_and_reports_counts_only(
    tmp_path: Path, original: pd.DataFrame
) -> None:
    from fedward.common.config import RunConfig
    from fedward.common.tasks import SiteSource
    from fedward.common.tasks.ckd import CkdTask

    frame = original.rename(columns={"sc": "S-Creat"})
    frame["S-Creat"] = _text(_num(original, "sc") * 88.42)
    frame.to_csv(tmp_path / "export.csv", index=False)
    (tmp_path / MAPPING_FILE_NAME).write_text('[columns]\nS-Creat = "sc"\n[units]\nsc = "µmol/L"\n', "utf-8")
    site = CkdTask().load_site(SiteSource("site-a", tmp_path), RunConfig())
    assert site.report["columns-harmonised"] == 1.0
    assert site.report["values-converted"] == 383.0
    assert site.report["cells-blanked"] == 3.0 and site.report["rows-read"] == 400.0
    assert all(isinstance(v, float) for v in site.report.values())
    assert any("column 'S-Creat' read as 'sc' (mapping), converted µmol/L → mg/dL" in d for d in site.details)
    assert site.files == [tmp_path / "export.csv"]  # the mapping is not part of the data set
