"""Data shipped with fedward: the UCI Chronic Kidney Disease table (CC BY 4.0, see ckd/SOURCE.md)."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from fedward.common.errors import ConfigError

_CKD_RELATIVE = Path("common") / "datasets" / "ckd" / "chronic_kidney_disease.csv"


def ckd_csv_path() -> Path:
    """Path of the shipped CKD CSV.

    Flower installs the app bundle (FAB) without data files, so when this module runs from a FAB
    the file is looked up in the installed `fedward` distribution instead.
    """
    here = Path(__file__).resolve().parent / "ckd" / _CKD_RELATIVE.name
    if here.is_file():
        return here
    try:
        dist = metadata.distribution("fedward")
    except metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        candidate = Path(str(dist.locate_file(_CKD_RELATIVE)))
        if candidate.is_file():
            return candidate
        direct_url = dist.read_text("direct_url.json")  # editable installs point at the checkout
        if direct_url:
            url = json.loads(direct_url).get("url", "")
            if url.startswith("file://"):
                candidate = Path(url.removeprefix("file://")) / _CKD_RELATIVE
                if candidate.is_file():
                    return candidate
    raise ConfigError(
        "the shipped CKD data (common/datasets/ckd/chronic_kidney_disease.csv) was not found; "
        "install fedward with `pip install -e .` or set the node config `data-dir`"
    )
