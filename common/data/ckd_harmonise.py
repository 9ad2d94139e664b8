"""Read a site's CSV header as the CKD schema: which column gives which feature, in which unit, with
which codes. The site mapping file wins over the built-in names; the result says where each choice
came from, so the site's report can tell what fedward did to its file.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from fedward.common.data.ckd_aliases import (
    BUILTIN_CODES,
    DIPSTICK_CODES,
    Alias,
    builtin_target,
    code_key,
    name_key,
    split_header,
)
from fedward.common.data.ckd_mapping import MAPPING_FILE_NAME, SiteMapping
from fedward.common.data.ckd_schema import (
    FEATURE_NAMES,
    FEATURES,
    LABEL,
    LABEL_NEGATIVE,
    LABEL_POSITIVE,
    BinaryFeature,
    NumericFeature,
)
from fedward.common.data.ckd_units import UNITS, Unit, accepted_units, find_unit, schema_unit
from fedward.common.errors import DataValidationError

BUILTIN = "built-in alias"
MAPPING = "mapping"
SCHEMA = "schema name"
_BY_NAME = {f.name: f for f in FEATURES}


@dataclass(frozen=True)
class ColumnPlan:
    """How one column of the site's file is read: its schema column, unit and codes."""

    header: str  # as written in the file
    index: int  # position in each row
    target: str  # schema feature or 'class'
    source: str  # SCHEMA, BUILTIN or MAPPING
    unit: Unit | None = None  # the site's unit (numeric features only)
    unit_source: str = ""  # "column name", MAPPING or "" (the schema's unit)
    codes: dict[str, str] = field(default_factory=dict)  # code_key → schema value
    mapped_codes: frozenset[str] = frozenset()  # the codes that came from the mapping

    @property
    def converts(self) -> bool:
        """Whether values are multiplied to reach the schema's unit."""
        return self.unit is not None and self.unit.factor != 1.0

    def describe(self, file: str, converted: int, recoded: Counter[tuple[str, str]]) -> str | None:
        """One report line for the site, or None when the column was read as it stands."""
        parts = []
        if self.source != SCHEMA:
            parts.append(f"read as '{self.target}' ({self.source})")
        if self.unit is not None and self.unit != schema_unit(self.target):
            target_unit = schema_unit(self.target).label
            said = f"unit from the {self.unit_source}" if self.unit_source else "unit"
            if self.converts:
                factor = self.unit.factor
                by = f"× {factor:.6g}" if factor >= 1 else f"÷ {1 / factor:.6g}"
                parts.append(f"converted {self.unit} → {target_unit} ({by}; {said}; {converted} value(s))")
            else:
                parts.append(f"{self.unit} = {target_unit} ({said}; no conversion)")
        if recoded:
            pairs = ", ".join(
                f"'{raw}' → '{value or '(missing)'}' ×{n}" for (raw, value), n in sorted(recoded.items())
            )
            whence = " and ".join(
                sorted(
                    {
                        MAPPING if code_key(raw) in self.mapped_codes else "built-in codes"
                        for raw, _ in recoded
                    }
                )
            )
            parts.append(f"codes recoded ({whence}): {pairs}")
        if not parts:
            return None
        return f"{file}: column '{self.header}' " + ", ".join(parts)


@dataclass
class Layout:
    """The plan for every schema column, plus notes on the file's other columns."""

    plans: dict[str, ColumnPlan]
    notes: list[str]


@dataclass(frozen=True)
class _Match:
    target: str
    source: str
    quantity: str
    unit_text: str | None


def _named(name: str, mapping: SiteMapping | None) -> tuple[str, str, str] | None:
    """(target, source, quantity) of a column name without its unit."""
    alias = builtin_target(name_key(name)) or Alias("")
    mapped = mapping.column_target(name) if mapping is not None else None
    if mapped is not None:
        return mapped, MAPPING, alias.quantity if alias.target == mapped else ""
    if alias.target:
        return alias.target, SCHEMA if name_key(name) == alias.target else BUILTIN, alias.quantity
    return None


def _match(header: str, mapping: SiteMapping | None, problems: list[str]) -> _Match | None:
    whole = _named(header, mapping)
    if whole is not None:
        return _Match(*whole, None)
    for k, (name, unit_text) in enumerate(split_header(header)):
        named = _named(name, mapping)
        if named is None:
            continue
        target, source, quantity = named
        feature = _BY_NAME.get(target)
        bracketed = k == 0 and header.rstrip().endswith((")", "]", "}"))
        if not isinstance(feature, NumericFeature):
            if bracketed:  # "htn (yes/no)": the bracket describes the codes
                return _Match(target, source, quantity, None)
            continue
        if find_unit(target, unit_text, quantity) is not None:
            return _Match(target, source, quantity, unit_text)
        if bracketed:
            problems.append(
                f"column '{header}': unknown unit {unit_text!r} for '{target}' ({feature.description}); "
                f"expected {accepted_units(target)}"
            )
            return None
    return None


def _unit(match: _Match, header: str, mapping: SiteMapping | None, problems: list[str]) -> tuple[Unit, str]:
    target, quantity = match.target, match.quantity
    in_name = find_unit(target, match.unit_text, quantity) if match.unit_text else None
    declared = mapping.units.get(target) if mapping is not None else None
    in_mapping = find_unit(target, declared, quantity) if declared else None
    if in_name is not None and in_mapping is not None and in_name != in_mapping:
        problems.append(
            f"column '{header}': its name says {in_name} but {MAPPING_FILE_NAME} units.{target} "
            f"says {in_mapping}; make them agree"
        )
    if in_mapping is not None:
        return in_mapping, MAPPING
    if in_name is not None:
        return in_name, "column name"
    if quantity and quantity != schema_unit(target).quantity:  # "BUN" without a unit: mg/dL BUN
        unit = find_unit(target, schema_unit(target).label, quantity)
        assert unit is not None
        return unit, "column name"
    return schema_unit(target), ""


def _codes(target: str, mapping: SiteMapping | None) -> tuple[dict[str, str], frozenset[str]]:
    feature = _BY_NAME.get(target)
    if target == LABEL:
        builtin = BUILTIN_CODES[(LABEL_POSITIVE, LABEL_NEGATIVE)]
    elif isinstance(feature, BinaryFeature):
        builtin = BUILTIN_CODES.get((feature.positive, feature.negative), {})
    elif target in ("al", "su"):
        builtin = DIPSTICK_CODES
    else:
        builtin = {}
    mapped = mapping.codes(target) if mapping is not None else {}
    return {**builtin, **mapped}, frozenset(mapped)


def plan_columns(file: str, header: list[str], mapping: SiteMapping | None = None) -> Layout:
    """Decide how each column of `header` is read; raise `DataValidationError` naming `file` and the
    column when the header is ambiguous (two columns for one feature, a unit fedward does not know,
    name and mapping disagreeing on a unit) or a schema column is missing."""
    problems: list[str] = []
    notes: list[str] = []
    found: dict[str, list[ColumnPlan]] = {}
    for index, raw in enumerate(header):
        text = raw.strip()
        if mapping is not None and mapping.ignores(text):
            notes.append(f"{file}: column '{text}' not read (ignore in {MAPPING_FILE_NAME})")
            continue
        match = _match(text, mapping, problems)
        if match is None:
            label = f"'{text}'" if text else f"{index + 1} (no name)"
            notes.append(f"{file}: column {label} not used (not a CKD schema column)")
            continue
        unit, unit_source = (None, "")
        if isinstance(_BY_NAME.get(match.target), NumericFeature):
            unit, unit_source = _unit(match, text, mapping, problems)
        codes, mapped = _codes(match.target, mapping)
        plan = ColumnPlan(text, index, match.target, match.source, unit, unit_source, codes, mapped)
        found.setdefault(match.target, []).append(plan)
    for target, plans in found.items():
        if len(plans) > 1:
            names = " and ".join(f"'{p.header}'" for p in plans)
            problems.append(
                f"columns {names} are all read as '{target}'; keep one, or list the others under "
                f"ignore = [...] in {MAPPING_FILE_NAME}"
            )
    if mapping is not None:
        present = {name_key(h) for h in header}
        for column in mapping.columns:
            if name_key(column) not in present:
                notes.append(f"{file}: {MAPPING_FILE_NAME} names column '{column}', which this file lacks")
    problems += [
        f"missing column '{c}' (expected the 24 UCI CKD features and 'class'; a column under another "
        f"name or unit can be declared in {MAPPING_FILE_NAME})"
        for c in (*FEATURE_NAMES, LABEL)
        if c not in found
    ]
    if problems:
        raise DataValidationError(file, problems)
    return Layout({t: plans[0] for t, plans in found.items()}, notes)


def unit_hint(plan: ColumnPlan, values: list[float]) -> str | None:
    """Why a numeric column looks like it is in another unit: most of its values are out of range in
    the unit it was read in, and (nearly) all fit another known unit. None when nothing suggests it."""
    feature = _BY_NAME.get(plan.target)
    if plan.unit is None or not isinstance(feature, NumericFeature) or len(values) < 5:
        return None

    def fits(unit: Unit) -> float:
        return sum(feature.low <= v * unit.factor <= feature.high for v in values) / len(values)

    if fits(plan.unit) >= 0.5:
        return None
    best = max((u for u in UNITS[plan.target] if u != plan.unit), key=fits, default=None)
    if best is None or fits(best) < 0.9:
        return None
    outside = round((1 - fits(plan.unit)) * len(values))
    schema_range = f"{feature.low:g}..{feature.high:g} {feature.unit}"
    return (
        f"column '{plan.header}': {outside} of {len(values)} values are outside {schema_range} "
        f"when read as {plan.unit}, but fit {best}; declare the unit in {MAPPING_FILE_NAME} "
        f'([units] {plan.target} = "{best}") or put it in the column name'
    )
