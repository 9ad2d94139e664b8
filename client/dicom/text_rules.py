"""PHI rules for text outside DICOM headers: folder and file names, NIfTI text fields, image text metadata.

Three rules, each a heuristic tuned to what exports hold (PACS folder names, scanner and converter text)
and to stay quiet on fedward's own layouts (`S1P000/study-1/t1ce/IM_0001.dcm`, `masks/S1P000_seg.nii.gz`,
`glioma/S1P000_03.png`, BraTS case names):

- "date": a calendar date, `20200131`, `2020-01-31`, `2020:01:31` (EXIF), `31.01.2020`, `01/31/2020`,
  `31-Jan-2020`;
- "person-name": a DICOM person name (`DOE^JOHN`), `Doe, John`, or two neighbouring words that are both
  capitalised (`Doe_John`, `DOE JOHN`) and neither an imaging or software word (`AX_FLAIR`, `Siemens
  Healthineers`); lower-case names (`doe_john`) are not recognised;
- "long-number": a run of 6 or more digits (MRNs, accession numbers, UIDs) or a social-security-like
  `123-45-6789`, once dates are taken out.

A rule says what kind of value it saw, never the value.
"""

from __future__ import annotations

import itertools
import re
from pathlib import PurePath

RULES = ("date", "person-name", "long-number")
_YEAR = r"(?:19|20)\d\d"
_MONTH = r"(?:0[1-9]|1[0-2])"
_DAY = r"(?:0[1-9]|[12]\d|3[01])"
_MONTH_NAMES = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*"
DATE = re.compile(
    rf"(?<!\d)(?:{_YEAR}([-_.:/]?){_MONTH}\1{_DAY}|{_DAY}([-_./]){_MONTH}\2{_YEAR}"
    rf"|{_MONTH}([-_./]){_DAY}\3{_YEAR}|{_DAY}[-_ ]?{_MONTH_NAMES}[-_ ]?{_YEAR})(?!\d)",
    re.IGNORECASE,
)
LONG_NUMBER = re.compile(r"\d{6,}|(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)")
PN_NAME = re.compile(r"[A-Za-z]{2,}\^[A-Za-z]")
COMMA_NAME = re.compile(r"\b(?:[A-Z][a-z]+|[A-Z]{2,}),\s*(?:[A-Z][a-z]+|[A-Z]{2,})\b")
WORD_SPLIT = re.compile(r"[\s_.,;:()\[\]{}+=/\\-]+")
NAME_WORD = re.compile(r"^(?:[A-Z][a-z]+|[A-Z]{2,})$")
# Capitalised words that are no person's name in an imaging export (compared lower-case).
_VOCABULARY_TEXT = """
    ax axial sag sagittal cor coronal tra trans transverse oblique obl brain head neck spine mri mr ct pet
    series study studies scan scans image images img slice slices volume seg segmentation mask masks label
    labels post pre gd gad contrast flair dwi adc swi dti bold perf perfusion localizer localiser survey
    scout mprage tse fse gre epi space vibe spgr fspgr bravo cube fast fat sat fs se ir stir tof mra dicom
    nifti export exports data site sites patient patients case cases anon anonymous anonymised anonymized
    deidentified routine protocol research tumour tumor glioma meningioma pituitary notumor none no yes
    left right high low res iso thin thick fov map maps siemens philips ge toshiba canon hitachi medical
    systems healthcare healthineers fsl spm itk ants freesurfer niftynet monai dcm dcmtk niix software
    version matplotlib python pil pillow adobe photoshop gimp created by with from the and for of on in
    at to raw final original copy copies new old test train training val validation source target
"""
VOCABULARY = frozenset(_VOCABULARY_TEXT.split())
PATH_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".dicom", ".ima", ".png", ".jpg", ".jpeg", ".bmp", ".tif",
                 ".tiff", ".csv", ".gz")  # fmt: skip


def _has_name(text: str) -> bool:
    if PN_NAME.search(text) or COMMA_NAME.search(text):
        return True
    words = [w for w in WORD_SPLIT.split(text) if w]
    named = [bool(NAME_WORD.match(w)) and w.lower() not in VOCABULARY for w in words]
    return any(a and b for a, b in itertools.pairwise(named))


def text_rules(text: str) -> list[str]:
    """The rules (of RULES, in that order) that `text` breaks; [] for clean text."""
    found = []
    if DATE.search(text):
        found.append("date")
    if _has_name(text):
        found.append("person-name")
    if LONG_NUMBER.search(DATE.sub(" ", text)):
        found.append("long-number")
    return found


def _stem(name: str) -> str:
    lower = name.lower()
    for suffix in PATH_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def path_rules(rel: PurePath) -> list[tuple[int, str]]:
    """(component number from 1, rule) for each component of a relative path that breaks a rule; the
    last component is judged without its file suffix."""
    found = []
    for number, part in enumerate(rel.parts, start=1):
        text = _stem(part) if number == len(rel.parts) else part
        found += [(number, rule) for rule in text_rules(text)]
    return found
