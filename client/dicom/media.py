"""PHI in the metadata of NIfTI volumes and PNG / JPEG / TIFF images (the text the pixels come with).

- NIfTI: the header's text fields `descrip`, `aux_file`, `intent_name` and (NIfTI-1) `db_name` are checked
  with the text rules of `client/dicom/text_rules.py` (category `date`, `name` or `id` by rule); any header
  extension is a finding (`nifti-extension`): extensions are opaque blobs, converters put whole DICOM
  headers or free-text comments in them.
- Images: every text value PIL reads (PNG tEXt / iTXt / zTXt chunks, JPEG comments and other `info`
  strings) and every EXIF text tag is checked with the same rules; an author, artist or owner field that
  is not empty is a `name` finding, GPS tags a `location` finding.

Findings name the field, never its value. A file that cannot be read yields no finding: the loaders skip
it with the reason.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fedward.client.dicom.text_rules import text_rules

NIFTI_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")
RULE_CATEGORY = {"date": "date", "person-name": "name", "long-number": "id"}
EXIF_IFD, GPS_IFD = 0x8769, 0x8825
NAME_KEYS = re.compile(r"author|artist|owner|patient|person|name", re.IGNORECASE)
EXIF_NAME_TAGS = {0x013B: "Artist", 0xA430: "CameraOwnerName"}


def _text(value: object) -> str:
    if hasattr(value, "item"):  # a numpy scalar or 0-d array (NIfTI header fields)
        value = value.item()
    if isinstance(value, bytes):
        value = value.split(b"\x00", 1)[0].decode("latin-1")
    return str(value).strip() if isinstance(value, str) else ""


def _rules(field: str, value: object) -> list[tuple[str, str]]:
    return [(field, RULE_CATEGORY[rule]) for rule in text_rules(_text(value))]


def nifti_findings(image: Any) -> list[tuple[str, str]] | None:
    """(field, category) for each PHI finding in a (nibabel) NIfTI image's header; None when it cannot
    be read."""
    try:
        header = image.header
        keys = set(header.keys())
        found = [
            f for name in NIFTI_TEXT_FIELDS if name in keys for f in _rules(f"nifti {name}", header[name])
        ]
        if len(getattr(header, "extensions", ())):
            found.append(("nifti extensions", "nifti-extension"))
    except Exception:  # damaged: the loader skips it with the reason
        return None
    return found


def image_findings(path: Path) -> list[tuple[str, str]] | None:
    """(field, category) for each PHI finding in an image's text metadata and EXIF; None when unreadable."""
    from PIL import ExifTags, Image

    found: list[tuple[str, str]] = []
    try:
        with Image.open(path) as img:
            text = dict(getattr(img, "text", None) or {})  # PNG: all text chunks (loads the image)
            info = {**{k: v for k, v in img.info.items() if isinstance(v, str)}, **text}
            exif = img.getexif()
            tags = {**dict(exif), **dict(exif.get_ifd(EXIF_IFD))}
            gps = dict(exif.get_ifd(GPS_IFD))
    except Exception:
        return None
    for key, value in info.items():
        field = f"image text {key}" if re.fullmatch(r"[A-Za-z][\w .-]{0,39}", str(key)) else "image text"
        if NAME_KEYS.search(str(key)) and _text(value):
            found.append((field, "name"))
        found += _rules(field, value)
    for tag, value in tags.items():
        field = f"EXIF {ExifTags.TAGS.get(tag, hex(tag))}"
        if tag in EXIF_NAME_TAGS and _text(value):
            found.append((field, "name"))
        elif isinstance(value, str | bytes):
            found += _rules(field, value[8:] if tag == 0x9286 and isinstance(value, bytes) else value)
    if gps:
        found.append(("EXIF GPSInfo", "location"))
    return list(dict.fromkeys(found))
