"""The DICOM PHI gate: does a site folder still carry protected health information in its headers?

The attribute table and its options are the PS3.15 profile in `client/dicom/profile.py`.

A file **carries PHI** when any of these holds (each is one finding: file, tag keyword, category):

- a private tag is present anywhere (category "private"), or overlay or curve data ("graphics");
- BurnedInAnnotation is YES ("burned-in": text in the pixels, which no header edit removes);
- an X attribute is present and not empty (its category), except a date under the modified-dates
  option when the file declares it (LongitudinalTemporalInformationModified = MODIFIED or code 113107);
- a series descriptor holds anything but a contrast name ("free-text");
- a person name, or LT / ST / UT free text, outside the table is present and not empty ("name",
  "free-text"): the safety net for attributes the table does not list;
- PatientIdentityRemoved is not YES while identifying attributes (Z, D and U attributes of the table:
  names, ids, dates, UIDs...) or other dates are present and not empty.

Only headers are read (`stop_before_pixels`), so a site's check costs about a millisecond per file.
Findings name the attribute, never its value. Files that are not DICOM are counted and left to the loader;
a DICOM header with an element that cannot be decoded is a finding ("unchecked").

Paths are PHI too: every folder and file name under the site folder is checked with the rules of
`text_rules.py` (category "path-date", "path-person-name", "path-long-number"), and NIfTI headers and
image text metadata with `media.py`. A file whose path breaks a rule is named by its position
in the folder's sorted file list and its clean leading folders ("file #7 under glioma"), never by its name.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from fedward.client.dicom.media import image_findings, nifti_findings
from fedward.client.dicom.profile import (
    CLEAN_DESCRIPTORS,
    DATE_VRS,
    FREE_TEXT_VRS,
    MODIFIED_DATES,
    PROFILE,
    dates_modified,
    identity_removed,
    is_clean_descriptor,
    is_overlay_or_curve,
)
from fedward.client.dicom.text_rules import path_rules
from fedward.common.data.mri.folder import dicom_dataset, nifti_image, site_folder
from fedward.common.errors import DataValidationError

log = logging.getLogger("fedward.client")

GATE_MODES = ("block", "warn")
DEIDENTIFY_HINT = (
    "de-identify the folder with `fedward site deidentify IN OUT` and train on OUT, or set "
    'phi-gate = "warn" in the site policy to train anyway'
)


@dataclass(frozen=True)
class Finding:
    """One attribute that makes a file carry PHI: where, which (keyword or tag), what kind. No value."""

    file: str
    keyword: str
    category: str

    def __str__(self) -> str:
        return f"{self.file}: {self.keyword} ({self.category})"


def _name(element: DataElement) -> str:
    return element.keyword or str(element.tag)


PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)  # float, double float and integer pixel data


def check_dataset(ds: Dataset, file: str) -> list[Finding]:
    """The PHI findings of one dataset (header and nested sequences), one per attribute and kind."""
    removed, modified = identity_removed(ds), dates_modified(ds)
    found: dict[tuple[str, str], None] = {}

    def visit(_: Dataset, element: DataElement) -> None:
        keyword = element.keyword
        if element.tag.is_private:
            found[(str(element.tag), "private")] = None
            return
        if is_overlay_or_curve(element):
            found[(_name(element), "graphics")] = None
            return
        if keyword == "BurnedInAnnotation":
            if str(element.value or "").strip().upper() == "YES":
                found[(keyword, "burned-in")] = None
            return
        if element.is_empty:
            return
        if keyword in PROFILE:
            action, category = PROFILE[keyword]
            if keyword in CLEAN_DESCRIPTORS:
                if not is_clean_descriptor(element.value):
                    found[(keyword, "free-text")] = None
            elif not (removed and (action != "X" or (modified and keyword in MODIFIED_DATES))):
                found[(keyword, category)] = None
        elif element.VR == "PN":
            found[(_name(element), "name")] = None
        elif element.VR in FREE_TEXT_VRS:
            found[(_name(element), "free-text")] = None
        elif element.VR in DATE_VRS and not removed:
            found[(_name(element), "date")] = None

    _walk_header(ds, visit)
    return [Finding(file, keyword, category) for keyword, category in found]


def _walk_header(ds: Dataset, visit: Callable[[Dataset, DataElement], None]) -> None:
    """`Dataset.walk` without the pixel data: it holds no text, and it stays on disk (deferred) for the
    loader, which decodes it once."""
    for tag in sorted(ds.keys()):
        if tag in PIXEL_TAGS:
            continue
        element = ds[tag]
        visit(ds, element)
        if element.VR == "SQ":
            for item in element.value or ():
                _walk_header(item, visit)


@dataclass
class GateReport:
    """What the gate found in a folder: counts per category, the flagged files and a few examples."""

    folder: Path
    files_checked: int = 0
    not_dicom: int = 0
    flagged: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    examples: list[Finding] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """No file carries PHI."""
        return not self.flagged

    def metrics(self) -> dict[str, float]:
        """Counts only (no file names): safe for the site's data report."""
        out = {"phi-files-checked": float(self.files_checked), "phi-files-flagged": float(len(self.flagged))}
        out.update({f"phi-{category}": float(n) for category, n in sorted(self.counts.items())})
        return out

    def summary(self) -> str:
        """One line: how many files carry PHI, by category."""
        kinds = ", ".join(f"{category} {n}" for category, n in self.counts.most_common())
        return f"{len(self.flagged)} of {self.files_checked} file(s) carry PHI" + (
            f" (findings by category: {kinds})" if kinds else ""
        )

    def problems(self, limit: int = 10) -> list[str]:
        """Lines for an error or a log: summary, flagged files, examples (attribute names, no values)."""
        files = ", ".join(self.flagged[:limit]) + (" ..." if len(self.flagged) > limit else "")
        lines = [self.summary(), f"files: {files}"]
        lines += [str(f) for f in self.examples[:limit]]
        return [*lines, DEIDENTIFY_HINT]


class PhiGateError(DataValidationError):
    """The site's files (headers, metadata or paths) carry PHI and its policy blocks training on them."""

    def __init__(self, report: GateReport, limit: int = 10) -> None:
        self.report = report
        super().__init__(str(report.folder), report.problems(limit), limit=limit + 3)


def file_label(rel: PurePath, number: int, flagged: list[tuple[int, str]]) -> str:
    """How findings name a file: its relative path, or when a path component breaks a rule its number in
    the sorted file list and the clean folders before the first such component."""
    if not flagged:
        return rel.as_posix()
    prefix = PurePath(*rel.parts[: min(n for n, _ in flagged) - 1]).as_posix()
    return f"file #{number}" + (f" under {prefix}" if prefix != "." else "")


def _content(path: Path, kind: str, label: str) -> list[Finding] | None:
    if kind == "dicom":
        ds = dicom_dataset(path)  # the site folder's one parse, kept for the loader
        if isinstance(ds, str):  # not DICOM, or unreadable: the loader skips it with the reason
            return None
        try:
            return check_dataset(ds, label)
        except Exception:  # an element that cannot be decoded: not known to be clean
            return [Finding(label, "header", "unchecked")]
    if kind == "nifti":
        image = nifti_image(path)  # opened once; its voxels are read later, by the loader only
        found = None if isinstance(image, str) else nifti_findings(image)
    else:
        found = image_findings(path)
    return None if found is None else [Finding(label, field, category) for field, category in found]


def check_folder(folder: Path, *, examples: int = 20) -> GateReport:
    """Check every file the MRI loaders would read in a site folder: its path, its DICOM header or its
    NIfTI / image metadata."""
    folder = Path(folder)
    report = GateReport(folder)
    files = site_folder(folder).files  # the one listing (kept for the loader inside `kept_site_folder`)
    kinds = {p: "dicom" for p in files.dicom} | {p: "nifti" for p in files.nifti}
    kinds |= {p: "image" for p in files.images}
    for number, path in enumerate(sorted(kinds), start=1):
        rel = path.relative_to(folder)
        flagged = path_rules(rel)
        label = file_label(rel, number, flagged)
        findings = [Finding(label, f"path component {n}", f"path-{rule}") for n, rule in flagged]
        content = _content(path, kinds[path], label)
        if content is None and kinds[path] == "dicom":
            report.not_dicom += 1
        if content is not None or findings:
            report.files_checked += 1
        findings += content or []
        if findings:
            report.flagged.append(label)
            report.counts.update(f.category for f in findings)
            report.examples.extend(findings[: max(0, examples - len(report.examples))])
    return report


def enforce(report: GateReport, mode: str, site: str) -> None:
    """Block (raise PhiGateError) or warn (log, examples stay local) when the report found PHI."""
    if mode not in GATE_MODES:
        raise ValueError(f"phi-gate must be one of {GATE_MODES}, got {mode!r}")
    if report.passed:
        return
    if mode == "block":
        raise PhiGateError(report)
    for line in report.problems():
        log.warning("site %s: PHI gate (warn): %s", site, line)


def gate_site(folder: Path, mode: str, site: str) -> GateReport:
    """Check a site folder and apply the policy's mode; the report (counts) for the site's data report."""
    report = check_folder(folder)
    enforce(report, mode, site)
    return report
