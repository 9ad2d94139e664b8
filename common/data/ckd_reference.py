"""Public reference values of the CKD features: the centre and scale the federated statistics measure
each site's values against (common/stats.py).

They are adult clinical reference values and the encoding's own midpoints (0.5 for 0/1 features), set by
hand from the schema and textbook ranges, never fitted to any site's data: they may be published, and a
site's statistics only refine them.
"""

from __future__ import annotations

import numpy as np

from fedward.common.data.ckd_schema import FEATURE_NAMES
from fedward.common.stats import Reference

BINARY = (0.5, 0.5)
CENTRE_AND_SCALE: dict[str, tuple[float, float]] = {
    "age": (50.0, 20.0),
    "bp": (80.0, 15.0),
    "sg": (1.015, 0.007),
    "al": (1.0, 1.5),
    "su": (0.5, 1.0),
    "rbc": BINARY,
    "pc": BINARY,
    "pcc": BINARY,
    "ba": BINARY,
    "bgr": (120.0, 60.0),
    "bu": (40.0, 40.0),
    "sc": (1.2, 3.0),
    "sod": (140.0, 6.0),
    "pot": (4.5, 1.0),
    "hemo": (13.5, 3.0),
    "pcv": (40.0, 8.0),
    "wbcc": (8000.0, 3000.0),
    "rbcc": (4.8, 1.0),
    "htn": BINARY,
    "dm": BINARY,
    "cad": BINARY,
    "appet": BINARY,
    "pe": BINARY,
    "ane": BINARY,
}

CKD_REFERENCE = Reference(
    center=np.array([CENTRE_AND_SCALE[name][0] for name in FEATURE_NAMES]),
    scale=np.array([CENTRE_AND_SCALE[name][1] for name in FEATURE_NAMES]),
)
