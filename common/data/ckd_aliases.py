"""Names and codes fedward recognises without a site mapping file.

Column names are compared by `name_key` (case, spaces and punctuation do not matter:
"Serum Creatinine" = "serum_creatinine"). A name may carry its unit: "Creatinine (µmol/L)",
"hb [g/L]", "creatinine_umol_l", "WBC x10^9/L". Names that are ambiguous in lab exports are left
out on purpose: plain "albumin" and "sugar" may be serum values rather than the dipstick grades
`al` and `su`; such columns need a mapping.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from fedward.common.data.ckd_schema import FEATURE_NAMES, LABEL, LABEL_NEGATIVE, LABEL_POSITIVE
from fedward.common.data.ckd_units import BUN, UREA


@dataclass(frozen=True)
class Alias:
    """A built-in column name: the schema column it means and, for urea, which quantity."""

    target: str
    quantity: str = ""


_NAMES: dict[str, tuple[str, ...]] = {
    "age": ("patient_age", "age_years", "age_yrs"),
    "bp": ("blood_pressure", "bp_diastolic", "diastolic_bp", "diastolic", "dbp", "diastolic_blood_pressure"),
    "sg": ("specific_gravity", "urine_specific_gravity", "usg", "urine_sg"),
    "al": ("urine_albumin", "albumin_dipstick", "dipstick_albumin"),
    "su": ("urine_sugar", "urine_glucose", "sugar_dipstick", "dipstick_glucose"),
    "rbc": ("red_blood_cells", "urine_rbc", "rbc_urine"),
    "pc": ("pus_cells", "pus_cell", "urine_pus_cells"),
    "pcc": ("pus_cell_clumps", "pus_clumps"),
    "ba": ("bacteria", "urine_bacteria", "bacteriuria"),
    "bgr": (
        "blood_glucose_random",
        "random_blood_glucose",
        "rbg",
        "glucose",
        "blood_glucose",
        "random_glucose",
        "plasma_glucose",
        "glu",
    ),
    "sc": ("serum_creatinine", "creatinine", "scr", "creat", "crea", "cr", "plasma_creatinine"),
    "sod": ("sodium", "na", "serum_sodium"),
    "pot": ("potassium", "k", "serum_potassium"),
    "hemo": ("haemoglobin", "hemoglobin", "hb", "hgb"),
    "pcv": ("packed_cell_volume", "haematocrit", "hematocrit", "hct"),
    "wbcc": ("wc", "wbc", "white_blood_cells", "white_blood_cell_count", "wbc_count", "leukocytes", "wcc"),
    "rbcc": ("rc", "red_blood_cell_count", "rbc_count", "erythrocytes", "erythrocyte_count"),
    "htn": ("hypertension", "hypertensive"),
    "dm": ("diabetes", "diabetes_mellitus", "diabetic"),
    "cad": ("coronary_artery_disease",),
    "appet": ("appetite",),
    "pe": ("pedal_edema", "pedal_oedema", "oedema", "edema"),
    "ane": ("anemia", "anaemia"),
    LABEL: ("diagnosis", "ckd", "label", "outcome", "target", "ckd_status"),
}
_UREA_NAMES = ("blood_urea", "urea", "serum_urea", "plasma_urea")
_BUN_NAMES = ("bun", "blood_urea_nitrogen", "urea_nitrogen", "serum_urea_nitrogen")

BUILTIN_ALIASES: dict[str, Alias] = {
    **{alias: Alias(target) for target, aliases in _NAMES.items() for alias in aliases},
    **{alias: Alias("bu", UREA) for alias in _UREA_NAMES},
    **{alias: Alias("bu", BUN) for alias in _BUN_NAMES},
}

# Codes accepted for each two-valued vocabulary (besides the schema's own words), lower case.
# 1/0 is read only where its meaning is plain (yes/no, present/absent, the label 1 = CKD).
_YES = ("y", "1", "true", "t", "positive", "pos")
_NO = ("n", "0", "false", "f", "negative", "neg")
BUILTIN_CODES: dict[tuple[str, str], dict[str, str]] = {
    ("yes", "no"): {**dict.fromkeys(_YES, "yes"), **dict.fromkeys(_NO, "no")},
    ("present", "notpresent"): {
        **dict.fromkeys((*_YES, "yes", "detected"), "present"),
        **dict.fromkeys(
            (*_NO, "no", "absent", "not present", "not_present", "not detected", "nil"), "notpresent"
        ),
    },
    ("abnormal", "normal"): {"abn": "abnormal"},
    ("poor", "good"): {},
    (LABEL_POSITIVE, LABEL_NEGATIVE): {
        **dict.fromkeys((*_YES, "yes"), LABEL_POSITIVE),
        **dict.fromkeys(
            (
                *_NO,
                "no",
                "not ckd",
                "not_ckd",
                "no ckd",
                "non-ckd",
                "non ckd",
                "nonckd",
                "healthy",
                "control",
            ),
            LABEL_NEGATIVE,
        ),
    },
}
DIPSTICK_CODES: dict[str, str] = {
    "neg": "0",
    "negative": "0",
    "nil": "0",
    **{"+" * n: str(n) for n in range(1, 6)},
    **{f"{n}+": str(n) for n in range(1, 6)},
}


def name_key(text: str) -> str:
    """A column name for comparison: lower case, runs of other characters as one '_'."""
    folded = unicodedata.normalize("NFKC", text).lower()
    return re.sub(r"[^a-z0-9]+", "_", folded).strip("_")


def code_key(text: str) -> str:
    """A cell or code for comparison: trimmed, lower case, and "1.0" read as "1"."""
    text = text.strip().lower()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() and "e" not in text else text


def builtin_target(key: str) -> Alias | None:
    """The schema column a built-in name (already a `name_key`) stands for."""
    if key in FEATURE_NAMES or key == LABEL:
        return Alias(key)
    return BUILTIN_ALIASES.get(key)


_BRACKETED = re.compile(r"^(?P<name>.*?)\s*[(\[{](?P<unit>[^()\[\]{}]+)[)\]}]\s*$")


def split_header(header: str) -> list[tuple[str, str]]:
    """Ways to read a column name as (name, unit): "Hb (g/L)" → ("Hb", "g/L"); "creatinine_umol_l"
    → ("creatinine_umol", "l"), ("creatinine", "umol/l"), ... shortest unit first."""
    found = _BRACKETED.match(header)
    if found and found["name"].strip():
        return [(found["name"].strip(), found["unit"].strip())]
    words = [w for w in re.split(r"[\s_,;]+", header.strip()) if w]
    return [(" ".join(words[:-k]), "/".join(words[-k:])) for k in range(1, min(len(words), 5))]
