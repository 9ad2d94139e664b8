"""The site manifest: a CSV mapping patient or study ids (or image files) to a class and a mask."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from fedward.common.data.mri.files import outside_reason
from fedward.common.data.mri.sample import UNLABELLED, Skipped, class_index
from fedward.common.errors import DataValidationError

MANIFEST_NAME = "manifest.csv"
PATH_COLUMNS = ("file", "mask")


@dataclass(frozen=True)
class Entry:
    """One manifest row."""

    patient_id: str
    label: int = UNLABELLED
    mask: Path | None = None


@dataclass
class Manifest:
    """Manifest rows indexed by study id, patient id and image file (relative to the site folder)."""

    by_study: dict[tuple[str, str], Entry] = field(default_factory=dict)  # (patient, study id)
    by_patient: dict[str, Entry] = field(default_factory=dict)
    by_file: dict[str, Entry] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)

    def lookup(self, patient_id: str, *study_ids: str) -> Entry | None:
        """The row of the patient's study (StudyInstanceUID or StudyID), else of the patient."""
        for sid in study_ids:
            if sid and (patient_id, sid) in self.by_study:
                return self.by_study[(patient_id, sid)]
        return self.by_patient.get(patient_id)


def path_problems(site_dir: Path, row_no: int, row: dict[str, str]) -> list[str]:
    """Why the row's `file` / `mask` paths do not stay inside `site_dir` (row and column named, no value)."""
    problems = []
    for column in PATH_COLUMNS:
        why = outside_reason(site_dir, row[column]) if row.get(column) else None
        if why is not None:
            problems.append(
                f"{MANIFEST_NAME} row {row_no}, column '{column}': {why}; expected a path relative to "
                "the data folder and inside it (nothing outside is read)"
            )
    return problems


def read_manifest(site_dir: Path) -> Manifest:
    """`<site>/manifest.csv` (columns patient_id, label; optional study_id, mask, file); empty if absent.

    A row with an unknown label is skipped with its reason; a file without a patient_id column, or with a
    `file` or `mask` path that leaves the site folder (absolute, `..`, a link outside), is an error.
    """
    path = site_dir / MANIFEST_NAME
    manifest = Manifest()
    if not path.is_file():
        return manifest
    if outside_reason(site_dir, MANIFEST_NAME) is not None:
        raise DataValidationError(str(path), ["a symbolic link whose target is outside the data folder"])
    problems: list[str] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = {c.strip().lower() for c in reader.fieldnames or []}
        if "patient_id" not in columns:
            raise DataValidationError(str(path), ["missing column 'patient_id' (expected patient_id, label)"])
        for row_no, raw in enumerate(reader, start=1):
            row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
            refused = path_problems(site_dir, row_no, row)
            if refused:
                problems.extend(refused)
                continue
            patient = row.get("patient_id", "")
            if not patient:
                manifest.skipped.append(Skipped(f"{path.name} row {row_no}", "empty patient_id"))
                continue
            label = UNLABELLED
            if row.get("label"):
                found = class_index(row["label"])
                if found is None:
                    reason = (
                        f"unknown label {row['label']!r} (expected glioma, meningioma, pituitary, notumor)"
                    )
                    manifest.skipped.append(Skipped(f"{path.name} row {row_no}", reason))
                    continue
                label = found
            entry = Entry(patient, label, site_dir / row["mask"] if row.get("mask") else None)
            if row.get("study_id"):
                manifest.by_study[(patient, row["study_id"])] = entry
            else:
                manifest.by_patient[patient] = entry
            if row.get("file"):
                manifest.by_file[row["file"]] = entry
            manifest.by_patient.setdefault(patient, entry)
    if problems:
        raise DataValidationError(str(path), problems)
    return manifest
