"""Patient keys: one SHA-256 per patient, from the content the loader read, never from file names.

The privacy ledger keys a site's lifetime ε on these (`client/ledger.py`). Each task hashes what
identifies a patient after loading (CKD: the harmonised row; MRI: the pseudonymous patient id), under
a domain prefix of its own, so that renaming, reordering, re-exporting or converting units of the same
patients gives the same keys, and keys of different tasks never collide.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

import numpy as np

CKD_ROW = b"fedward-patient-ckd-row-v1\0"
MRI_PATIENT = b"fedward-patient-mri-id-v1\0"


def _number(value: float) -> str:
    """Fixed formatting: 6 significant digits (float32 storage and unit conversion round-trips agree),
    'nan' for missing, no negative zero."""
    if math.isnan(value):
        return "nan"
    text = f"{float(value):.6g}"
    return "0" if text == "-0" else text


def ckd_row_keys(x: np.ndarray, y: np.ndarray) -> list[str]:
    """One key per row of harmonised features `x` (n, 24; NaN = missing) and labels `y` (n,)."""
    keys = []
    for features, label in zip(np.asarray(x, dtype=np.float64), np.asarray(y), strict=True):
        row = ",".join(_number(v) for v in features) + f";{int(label)}"
        keys.append(hashlib.sha256(CKD_ROW + row.encode()).hexdigest())
    return keys


def mri_patient_keys(patient_ids: Iterable[str]) -> list[str]:
    """One key per distinct pseudonymous patient id (a patient's new studies keep their key)."""
    return [hashlib.sha256(MRI_PATIENT + pid.encode()).hexdigest() for pid in sorted(set(patient_ids))]
