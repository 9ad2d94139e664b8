"""The fixed CKD schema every site shares: names, units, plausible ranges and vocabularies.

All sites encode features the same way, so no encoder is ever fitted at a site. Binary nominal
features map to 0/1 with the clinically abnormal value as 1; ordinal ones (sg, al, su) keep their value.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NumericFeature:
    """A numeric lab value or vital sign with its unit and plausible clinical range (inclusive)."""

    name: str
    description: str
    unit: str
    low: float
    high: float


@dataclass(frozen=True)
class OrdinalFeature:
    """A nominal feature whose allowed values are numbers (specific gravity, dipstick grades)."""

    name: str
    description: str
    levels: tuple[float, ...]


@dataclass(frozen=True)
class BinaryFeature:
    """A two-valued nominal feature; `positive` encodes to 1, `negative` to 0."""

    name: str
    description: str
    positive: str
    negative: str


Feature = NumericFeature | OrdinalFeature | BinaryFeature

FEATURES: tuple[Feature, ...] = (
    NumericFeature("age", "age", "years", 0, 120),
    NumericFeature("bp", "blood pressure (diastolic)", "mm Hg", 30, 250),
    OrdinalFeature("sg", "urine specific gravity", (1.005, 1.010, 1.015, 1.020, 1.025)),
    OrdinalFeature("al", "urine albumin (dipstick grade)", (0, 1, 2, 3, 4, 5)),
    OrdinalFeature("su", "urine sugar (dipstick grade)", (0, 1, 2, 3, 4, 5)),
    BinaryFeature("rbc", "red blood cells in urine", "abnormal", "normal"),
    BinaryFeature("pc", "pus cells in urine", "abnormal", "normal"),
    BinaryFeature("pcc", "pus cell clumps", "present", "notpresent"),
    BinaryFeature("ba", "bacteria", "present", "notpresent"),
    NumericFeature("bgr", "blood glucose random", "mg/dL", 10, 1000),
    NumericFeature("bu", "blood urea", "mg/dL", 1, 500),
    NumericFeature("sc", "serum creatinine", "mg/dL", 0.1, 80),
    NumericFeature("sod", "sodium", "mEq/L", 100, 200),
    NumericFeature("pot", "potassium", "mEq/L", 1.5, 15),
    NumericFeature("hemo", "haemoglobin", "g/dL", 2, 25),
    NumericFeature("pcv", "packed cell volume", "%", 5, 70),
    NumericFeature("wbcc", "white blood cell count", "cells/µL", 1000, 60000),
    NumericFeature("rbcc", "red blood cell count", "millions/µL", 1, 10),
    BinaryFeature("htn", "hypertension", "yes", "no"),
    BinaryFeature("dm", "diabetes mellitus", "yes", "no"),
    BinaryFeature("cad", "coronary artery disease", "yes", "no"),
    BinaryFeature("appet", "appetite", "poor", "good"),
    BinaryFeature("pe", "pedal oedema", "yes", "no"),
    BinaryFeature("ane", "anaemia", "yes", "no"),
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
LABEL = "class"
LABEL_POSITIVE = "ckd"
LABEL_NEGATIVE = "notckd"
NUM_FEATURES = len(FEATURES)
