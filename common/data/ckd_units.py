"""Units a site may report CKD lab values in, and the exact factor to the schema's unit.

The schema (`ckd_schema.py`) keeps the UCI units: glucose, urea and creatinine in mg/dL, sodium and
potassium in mEq/L, haemoglobin in g/dL, PCV in %, white cells per µL (= per cumm), red cells in
millions per µL. `bu` is *blood urea* in mg/dL, not blood urea nitrogen: the UCI notes call it
"blood urea", and its healthy rows (10-50 mg/dL, median 33) match urea's reference range, not BUN's
(7-20 mg/dL). BUN is therefore its own quantity here, converted with urea's molar mass over that of
its two nitrogen atoms (60.06 / 28.014).

Unit strings are compared after `normalise_unit`: case, spaces, brackets, micro spellings (µ, μ, u,
mc, micro), superscripts and the ways of writing powers of ten ("x10^9/L", "×10⁹/l", "10e9/L") do
not matter, and cells/cumm = /mm³ = /µL.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

CREATININE_UMOL_PER_MG_DL = 88.42  # µmol/L in 1 mg/dL (molar mass 113.1 g/mol)
UREA_MG_DL_PER_MMOL_L = 6.006  # urea 60.06 g/mol
BUN_MG_DL_PER_MMOL_L = 2.8014  # two nitrogen atoms, 28.014 g/mol
GLUCOSE_MG_DL_PER_MMOL_L = 18.016  # glucose 180.16 g/mol
HB_G_DL_PER_MMOL_L = 1.611  # haemoglobin monomer 16.11 kg/mol
MMHG_PER_KPA = 7.50062

UREA = "urea"
BUN = "BUN"


@dataclass(frozen=True)
class Unit:
    """A unit a site may use for a feature: values × `factor` are in the schema's unit.

    `quantity` tells apart what is measured when a feature can be reported as two quantities
    (blood urea or blood urea nitrogen); it is empty for every other feature.
    """

    label: str
    factor: float
    quantity: str = ""

    def __str__(self) -> str:
        return f"{self.label} {self.quantity}" if self.quantity == BUN else self.label


UNITS: dict[str, tuple[Unit, ...]] = {
    "age": (Unit("years", 1.0), Unit("months", 1 / 12)),
    "bp": (Unit("mm Hg", 1.0), Unit("kPa", MMHG_PER_KPA)),
    "bgr": (Unit("mg/dL", 1.0), Unit("mmol/L", GLUCOSE_MG_DL_PER_MMOL_L), Unit("g/L", 100.0)),
    "bu": (
        Unit("mg/dL", 1.0, UREA),
        Unit("mmol/L", UREA_MG_DL_PER_MMOL_L, UREA),
        Unit("g/L", 100.0, UREA),
        Unit("mg/dL", UREA_MG_DL_PER_MMOL_L / BUN_MG_DL_PER_MMOL_L, BUN),
        Unit("mmol/L", UREA_MG_DL_PER_MMOL_L, BUN),  # one mmol of urea carries one mmol of N2
    ),
    "sc": (
        Unit("mg/dL", 1.0),
        Unit("µmol/L", 1 / CREATININE_UMOL_PER_MG_DL),
        Unit("mmol/L", 1000 / CREATININE_UMOL_PER_MG_DL),
    ),
    "sod": (Unit("mEq/L", 1.0), Unit("mmol/L", 1.0)),
    "pot": (Unit("mEq/L", 1.0), Unit("mmol/L", 1.0)),
    "hemo": (Unit("g/dL", 1.0), Unit("g/L", 0.1), Unit("mmol/L", HB_G_DL_PER_MMOL_L)),
    "pcv": (Unit("%", 1.0), Unit("L/L", 100.0), Unit("fraction", 100.0)),
    "wbcc": (Unit("cells/µL", 1.0), Unit("×10^9/L", 1000.0), Unit("×10^3/µL", 1000.0), Unit("G/L", 1000.0)),
    "rbcc": (Unit("millions/µL", 1.0), Unit("×10^12/L", 1.0), Unit("T/L", 1.0)),
}

_QUANTITIES = (
    (re.compile(r"\b(?:as\s+)?(?:bun|urea[\s_-]*nitrogen|urea[\s_-]*n)\b"), BUN),
    (re.compile(r"\b(?:as\s+)?urea\b"), UREA),
)
_WORDS = (  # applied in order to the lower-case text while words are still apart
    (r"\bmicro", "u"),
    (r"\bmc(?=(?:mol|l|g)\b)", "u"),
    (r"\b(?:percent|pct)\b", "%"),
    (r"\bper\b", "/"),
    (r"\b(?:deci)(?:litres?|liters?)\b", "dl"),
    (r"\b(?:milli)(?:litres?|liters?)\b", "ml"),
    (r"(?:litres?|liters?)\b", "l"),
    (r"mol(?:e)?s\b", "mol"),
    (r"\bmilligrams?\b|\bmgs\b", "mg"),
    (r"\bgrams?\b|\bgms?\b", "g"),
    (r"\bcells?\b|\bcount\b", ""),
    (r"\b(?:millions?|mill)\b", "10^6"),
    (r"\bthousands?\b", "10^3"),
    (r"\b(?:years?|yrs?|y)\b", "years"),
    (r"\b(?:months?|mo)\b", "months"),
    (r"\btorr\b", "mmhg"),
)
_SYMBOLS = (  # applied in order once spaces are gone
    (r"×", "x"),
    (r"[x*](?=10)", ""),
    (r"10(?:\^|\*\*|\*|e)(-?\d+)", r"10^\1"),
    (r"/(?:cumm|cmm|mm\^?3)$", "/ul"),
    (r"^k(?=/ul$)", "10^3"),
    (r"^m(?=/ul$)", "10^6"),
    (r"^mm/hg$", "mmhg"),
    (r"^mg%$", "mg/dl"),
    (r"^g%$", "g/dl"),
    (r"/100ml$", "/dl"),
)
_SUPERSCRIPT = re.compile(r"[⁰¹²³⁴⁵⁶⁷⁸⁹⁻]+")
_SUPERSCRIPT_DIGITS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")


def normalise_unit(text: str) -> tuple[str, str | None]:
    """A unit string in canonical spelling, and the quantity it names (BUN or urea) if any.

    >>> normalise_unit("x10⁹ / L")
    ('10^9/l', None)
    >>> normalise_unit("mg/dL (BUN)")
    ('mg/dl', 'BUN')
    """
    text = _SUPERSCRIPT.sub(lambda m: "^" + m.group().translate(_SUPERSCRIPT_DIGITS), text)
    text = unicodedata.normalize("NFKC", text).lower().replace("μ", "u")
    quantity = None
    for pattern, name in _QUANTITIES:
        text, found = pattern.subn(" ", text)
        if found:
            quantity = name
            break
    text = re.sub(r"[()\[\]{}.]", " ", text)
    for pattern, replacement in _WORDS:
        text = re.sub(pattern, replacement, text)
    text = re.sub(r"\s+", "", text)
    for pattern, replacement in _SYMBOLS:
        text = re.sub(pattern, replacement, text)
    return text, quantity


def schema_unit(feature: str) -> Unit:
    """The schema's own unit of a numeric feature (factor 1)."""
    return UNITS[feature][0]


def default_quantity(feature: str) -> str:
    """What a feature measures when nothing says otherwise (blood urea for `bu`)."""
    return schema_unit(feature).quantity


def find_unit(feature: str, text: str, quantity: str | None = None) -> Unit | None:
    """The unit `text` names for `feature`, or None when it is not one fedward knows.

    A quantity written in the unit string ("mg/dL BUN") wins over `quantity` (what the column name
    said), which wins over the feature's default.
    """
    units = UNITS.get(feature, ())
    quantities = {u.quantity for u in units}
    canonical, named = normalise_unit(text)
    if named is not None and named not in quantities:
        return None  # "mg/dL BUN" for creatinine
    wanted = named or (quantity if quantity in quantities else default_quantity(feature))
    for unit in units:
        if unit.quantity == wanted and normalise_unit(unit.label)[0] == canonical:
            return unit
    return None


def accepted_units(feature: str) -> str:
    """The units of a feature, for error messages ("mg/dL, µmol/L or mmol/L")."""
    names = [str(u) for u in UNITS.get(feature, ())]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
