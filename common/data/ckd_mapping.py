"""A site's mapping file (`ckd-mapping.toml`): how its CKD export differs from the schema.

    delimiter = ";"                  # optional: field separator (",", ";", tab or "|"; default ",")
    decimal = ","                    # optional: decimal mark of numbers ("." or ","; default ".")
    ignore = ["Creatinine (old)"]    # optional: columns not to read

    [columns]                        # the site's column name → schema column
    "S-Creat" = "sc"
    "Outcome" = "class"

    [units]                          # schema column → unit of the site's values
    sc = "µmol/L"
    hemo = "g/L"
    bu = "mmol/L"                    # "mg/dL BUN" when the column holds urea nitrogen

    [values.htn]                     # schema column → the site's code → schema value ("" = missing)
    "1" = "yes"
    "0" = "no"

Every key is checked when the file is read; a problem is a `ConfigError` naming the file and the
key (`units.sc`, `values.htn."2"`). Column names match ignoring case, spaces and punctuation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedward.common.data.ckd_aliases import code_key, name_key
from fedward.common.data.ckd_schema import (
    FEATURE_NAMES,
    FEATURES,
    LABEL,
    LABEL_NEGATIVE,
    LABEL_POSITIVE,
    BinaryFeature,
    NumericFeature,
    OrdinalFeature,
)
from fedward.common.data.ckd_units import UNITS, accepted_units, find_unit
from fedward.common.errors import ConfigError
from fedward.common.tomlfile import read_toml
from fedward.common.validation_errors import KeyedValueError, validation_problems

MAPPING_FILE_NAME = "ckd-mapping.toml"
_TARGETS = (*FEATURE_NAMES, LABEL)
_BY_NAME = {f.name: f for f in FEATURES}
_UNKNOWN_KEY = "unknown key (expected delimiter, decimal, ignore, [columns], [units], [values.*])"


def _allowed_values(target: str) -> list[str]:
    feature = _BY_NAME.get(target)
    if target == LABEL:
        return [LABEL_POSITIVE, LABEL_NEGATIVE]
    if isinstance(feature, BinaryFeature):
        return [feature.positive, feature.negative]
    if isinstance(feature, OrdinalFeature):
        return [f"{v:g}" for v in feature.levels]
    return []


class SiteMapping(BaseModel):
    """How one site's CKD CSV names, measures and codes the schema's columns."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    delimiter: Literal[",", ";", "\t", "|"] = ","
    decimal: Literal[".", ","] = "."
    ignore: list[str] = Field(default_factory=list)
    columns: dict[str, str] = Field(default_factory=dict)
    units: dict[str, str] = Field(default_factory=dict)
    values: dict[str, dict[str, str | int | float]] = Field(default_factory=dict)

    @field_validator("columns")
    @classmethod
    def _known_targets(cls, columns: dict[str, str]) -> dict[str, str]:
        for column, target in columns.items():
            if target.strip().lower() not in _TARGETS:
                raise KeyedValueError(
                    column, f"{target!r} is not a schema column (expected one of {', '.join(_TARGETS)})"
                )
        return {column: target.strip().lower() for column, target in columns.items()}

    @field_validator("units")
    @classmethod
    def _known_units(cls, units: dict[str, str]) -> dict[str, str]:
        for target, unit in units.items():
            feature = _BY_NAME.get(target)
            if not isinstance(feature, NumericFeature):
                numeric = ", ".join(UNITS)
                raise KeyedValueError(target, f"not a numeric schema column (units apply to {numeric})")
            if find_unit(target, unit) is None:
                raise KeyedValueError(
                    target,
                    f"unknown unit {unit!r} for {target!r} ({feature.description}); "
                    f"expected {accepted_units(target)}",
                )
        return units

    @field_validator("values")
    @classmethod
    def _known_values(cls, values: dict[str, dict[str, str | int | float]]) -> dict[str, dict[str, str]]:
        checked: dict[str, dict[str, str]] = {}
        for target, codes in values.items():
            allowed = _allowed_values(target)
            if not allowed:
                raise KeyedValueError(
                    target, "codes can be given for categorical schema columns and 'class' only"
                )
            table: dict[str, str] = {}
            for code, value in codes.items():
                text = code_key(str(value))
                if text and text not in {code_key(a) for a in allowed}:
                    expected = ", ".join(repr(a) for a in allowed)
                    raise KeyedValueError(f'{target}."{code}"', f"{value!r} is not one of {expected} or ''")
                table[code_key(code)] = text
            checked[target] = table
        return checked

    @model_validator(mode="after")
    def _separators_differ(self) -> SiteMapping:
        if self.delimiter == self.decimal:
            raise ValueError(f"delimiter and decimal are both {self.delimiter!r}")
        return self

    def codes(self, target: str) -> dict[str, str]:
        """The site's codes (as `code_key`) → schema values for one column; empty when none given."""
        return {code: str(value) for code, value in self.values.get(target, {}).items()}

    def column_target(self, header: str) -> str | None:
        """The schema column the mapping gives for a site column name, if any."""
        key = name_key(header)
        return next((t for c, t in self.columns.items() if name_key(c) == key), None)

    def ignores(self, header: str) -> bool:
        """Whether the mapping says not to read this column."""
        return name_key(header) in {name_key(c) for c in self.ignore}


def find_site_mapping(data_dir: Path) -> Path | None:
    """The site's mapping file (`ckd-mapping.toml` in its data folder), if there is one."""
    path = Path(data_dir) / MAPPING_FILE_NAME
    return path if path.is_file() else None


def load_mapping(path: str | Path) -> SiteMapping:
    """Read and check a site mapping file; every problem is a ConfigError naming file and key."""
    path = Path(path)
    document = read_toml(path, "site mapping")
    try:
        return SiteMapping.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(validation_problems(exc, unknown_key=_UNKNOWN_KEY))
        raise ConfigError(f"site mapping {path}: {problems}") from exc
