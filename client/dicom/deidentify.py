"""`fedward site deidentify IN OUT`: a de-identified copy of a site's DICOM folder.

The attribute actions are those of the PS3.15 Basic Application Level Confidentiality Profile
(`client/dicom/profile.py`, Table E.1-1), with the Clean Descriptors and Retain Longitudinal Temporal
Information with Modified Dates options. Everything keyed comes from HMAC-SHA256 under the site's
secret, so a second export with the same secret gives the same pseudonyms and nobody without the
secret can recompute them:

- PatientID -> a pseudonym stable per patient (the patient is the original PatientID, else the
  PatientName, else the study); StudyID -> a keyed pseudonym; other names and ids emptied or removed;
- every DA / DT date of a patient moves back by one number of days (1 to 3650) derived from the
  patient's keyed hash, so intervals within a patient are kept; times are kept; birth date emptied;
- every instance UID (and every other UID that is not a registered DICOM UID) -> a UID under the
  "2.25." root made from the keyed hash, so one original UID always becomes the same new UID and the
  study / series structure (and references between files) survives;
- private tags, overlays, curves and free text removed; series descriptors kept only when they name a
  contrast (then written as that contrast, e.g. T1CE);
- PatientIdentityRemoved = YES, LongitudinalTemporalInformationModified = MODIFIED,
  DeidentificationMethod and DeidentificationMethodCodeSequence (113100, 113105, 113107).

Files with BurnedInAnnotation = YES (text in the pixels), DICOMDIR indexes and files that are not
DICOM are skipped and reported: the export holds only what was checked. The site manifest is
translated (patient and study ids mapped the same way, labels kept) and the NIfTI masks it names are
rewritten with a fresh header (no text fields, no extensions).

Paths are PHI: no folder or file name of IN is kept. OUT is `<patient>/<study>/<series>/<instance>.dcm`
with each name a keyed pseudonym of lower-case letters (`pt-...`, `st-...`, `se-...`, `im-...`: no digits
or capitals, so names cannot look like dates, MRNs or people), masks are `masks/mk-....nii.gz`, and the
manifest names the new masks. The log (JSON lines) is keyed by the new name and patient pseudonym and
a keyed hash of the input path; it says per file which attribute got which action, never an original
value, path or name. Every path read resolves inside IN (a manifest `file` / `mask` that is absolute, has
`..` or is a link outside refuses the export before anything is written; a linked file whose target is
outside IN is skipped unread) and every path written resolves inside OUT (or is the `--log` file, which
may not lie inside IN).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import os
import re
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path, PurePath

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.uid import UID

from fedward.client.dicom.gate import GateReport, check_folder
from fedward.client.dicom.profile import (
    CLEAN_DESCRIPTORS,
    DATE_VRS,
    FREE_TEXT_VRS,
    MODIFIED_DATES,
    PROFILE,
    is_overlay_or_curve,
)
from fedward.common.data.mri.files import inside, outside_reason
from fedward.common.data.mri.manifest import MANIFEST_NAME, path_problems
from fedward.common.data.mri.sample import contrast_name
from fedward.common.errors import ConfigError, DataValidationError

SECRET_ENV = "FEDWARD_SITE_SECRET"
MIN_SECRET_BYTES = 16
LOG_NAME = "deidentify-log.jsonl"
MAX_SHIFT_DAYS = 3650
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
METHOD = "fedward deidentify: PS3.15 basic profile, keyed pseudonyms"
METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113105", "Clean Descriptors Option"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
)
META_REMOVED = (
    "SourceApplicationEntityTitle",
    "SendingApplicationEntityTitle",
    "ReceivingApplicationEntityTitle",
    "PrivateInformationCreatorUID",
    "PrivateInformation",
)
NIFTI_SUFFIXES = (".nii", ".nii.gz")
UID_LIKE = re.compile(r"^[0-9]+(\.[0-9]+)+$")
NAME_LETTERS = 12  # letters of a keyed path name: 26**12 ~ 1e17 names
SECRET_HELP = (
    "make one once per site, keep it with the site's other secrets and reuse it for every export "
    "(the same secret gives the same pseudonyms): "
    'python -c "import secrets; print(secrets.token_hex(32))" > site-secret.key && '
    "chmod 600 site-secret.key, "
    f"then pass --secret-file site-secret.key or set {SECRET_ENV}"
)


def load_secret(secret_file: Path | None = None, environ: Mapping[str, str] = os.environ) -> bytes:
    """The site secret from `secret_file`, else from $FEDWARD_SITE_SECRET; ConfigError without one."""
    if secret_file is not None:
        try:
            secret = Path(secret_file).read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"site secret {secret_file}: cannot read ({exc.strerror or exc})") from exc
        where = str(secret_file)
    elif environ.get(SECRET_ENV, "").strip():
        secret, where = environ[SECRET_ENV].strip().encode(), f"${SECRET_ENV}"
    else:
        raise ConfigError(f"no site secret: the keyed pseudonyms need one; {SECRET_HELP}")
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"site secret {where}: {len(secret)} bytes, expected at least {MIN_SECRET_BYTES}; {SECRET_HELP}"
        )
    return secret


class Keys:
    """Keyed pseudonyms: HMAC-SHA256 under the site secret, one domain per kind of value."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, kind: str, value: str) -> bytes:
        return hmac.new(self._secret, f"{kind}\x00{value}".encode(), hashlib.sha256).digest()

    def patient_id(self, patient: str) -> str:
        """The pseudonymous PatientID of a patient (key: original PatientID, see `patient_key`)."""
        return "P" + self._mac("patient", patient).hex()[:23].upper()

    def study_id(self, value: str) -> str:
        """A StudyID (SH, at most 16 characters) for an original StudyID."""
        return "S" + self._mac("study-id", value).hex()[:15].upper()

    def uid(self, value: str) -> str:
        """The new UID of an original UID: a UUID from the keyed hash under the '2.25.' root."""
        digest = self._mac("uid", str(value).strip().rstrip("\x00"))
        return str(UID(f"2.25.{uuid.UUID(bytes=digest[:16], version=4).int}"))

    def day_shift(self, patient: str) -> int:
        """The patient's date offset in days, -MAX_SHIFT_DAYS..-1 (all their dates move together)."""
        return -(1 + int.from_bytes(self._mac("date-shift", patient)[:8], "big") % MAX_SHIFT_DAYS)

    def hashed(self, value: str) -> str:
        """A keyed hash for the log (e.g. of an input path)."""
        return self._mac("log", value).hex()[:16]

    def name(self, prefix: str, value: str) -> str:
        """A folder or file name for `value`: `prefix-` and lower-case letters from its keyed hash."""
        number, letters = int.from_bytes(self._mac(f"path-{prefix}", value), "big"), []
        for _ in range(NAME_LETTERS):
            number, digit = divmod(number, 26)
            letters.append(chr(ord("a") + digit))
        return f"{prefix}-{''.join(letters)}"


def patient_key(ds: Dataset) -> str:
    """Who a file belongs to: PatientID, else PatientName, else the study ("" when none is set)."""
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID"):
        value = str(ds.get(keyword, "") or "").strip()
        if value:
            return f"{keyword}:{value}" if keyword != "PatientID" else value
    return ""


def shift_date(value: str, days: int) -> str | None:
    """A DA or DT value moved by `days` (partial dates keep their precision); None if unparseable."""
    text = str(value).strip()
    if len(text) == 10 and text[4] == text[7] == ".":  # ACR-NEMA style YYYY.MM.DD
        text = text.replace(".", "")
    head = text[:8]
    if len(head) not in (4, 6, 8) or not head.isdigit():
        return None
    full = head + "0101"[len(head) - 4 :]
    try:
        moved = date(int(full[:4]), int(full[4:6]), int(full[6:8])) + timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return moved.strftime("%Y%m%d")[: len(head)] + text[8:]


def _values(element: DataElement) -> list[str]:
    value = element.value
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        return [str(value)]
    return [str(v) for v in value]


def _set(element: DataElement, values: list[str]) -> None:
    element.value = values[0] if len(values) == 1 else values


def _registered(value: str) -> bool:
    return UID(value).name != value


@dataclass
class FileChanges:
    """What de-identification did to one file: (attribute, action) -> count, and the new identity."""

    changes: Counter[tuple[str, str]] = field(default_factory=Counter)
    patient: str = ""

    def add(self, keyword: str, action: str) -> None:
        """Record one action on one attribute."""
        self.changes[(keyword, action)] += 1

    def as_log(self) -> list[dict[str, object]]:
        """The changes as log records (attribute, action, count)."""
        return [{"tag": k, "action": a, "count": n} for (k, a), n in sorted(self.changes.items())]


def deidentify_dataset(ds: Dataset, keys: Keys) -> FileChanges:
    """De-identify `ds` in place (nested sequences and file meta included); what changed."""
    key = patient_key(ds)
    days = keys.day_shift(key)
    out = FileChanges(patient=keys.patient_id(key))

    def shift(element: DataElement, keyword: str) -> None:
        moved = [shift_date(v, days) if v else v for v in _values(element)]
        if any(m is None for m in moved):
            element.value = None
            out.add(keyword, "emptied")
        else:
            _set(element, [str(m) for m in moved])
            out.add(keyword, "date-shifted")

    def remap(element: DataElement, keyword: str, registered_kept: bool) -> None:
        values = _values(element)
        new = [v if not v or (registered_kept and _registered(v)) else keys.uid(v) for v in values]
        if new != values:
            _set(element, new)
            out.add(keyword, "uid-remapped")

    def visit(dataset: Dataset, element: DataElement) -> None:
        tag, keyword, vr = element.tag, element.keyword, element.VR
        name = keyword or str(tag)
        if tag.is_private or is_overlay_or_curve(element):
            del dataset[tag]
            out.add(name, "removed")
            return
        if keyword == "PatientID":
            element.value = out.patient
            out.add(keyword, "pseudonymised")
        elif keyword == "StudyID":
            if not element.is_empty:
                element.value = keys.study_id(str(element.value))
                out.add(keyword, "pseudonymised")
        elif keyword in CLEAN_DESCRIPTORS:
            if element.is_empty:
                return
            contrast = contrast_name(str(element.value))
            if contrast is None:
                del dataset[tag]
                out.add(keyword, "removed")
            elif str(element.value) != contrast.upper():
                element.value = contrast.upper()
                out.add(keyword, "cleaned")
        elif keyword in MODIFIED_DATES:
            if vr in DATE_VRS and not element.is_empty:
                shift(element, keyword)
        elif keyword in PROFILE:
            action = PROFILE[keyword][0]
            if action == "X":
                del dataset[tag]
                out.add(keyword, "removed")
            elif action == "U":
                remap(element, keyword, registered_kept=False)
            elif not element.is_empty:  # Z and D: empty (a D attribute's dummy is a placeholder)
                element.value = Sequence() if vr == "SQ" else ("ANONYMOUS" if action == "D" else None)
                out.add(keyword, "emptied" if action == "Z" else "replaced")
        elif element.is_empty:
            return
        elif vr == "PN":
            element.value = None
            out.add(name, "emptied")
        elif vr in FREE_TEXT_VRS:
            del dataset[tag]
            out.add(name, "removed")
        elif vr in DATE_VRS:
            shift(element, name)
        elif vr == "UI":
            remap(element, name, registered_kept=True)

    ds.walk(visit)
    for keyword, value in (("PatientID", out.patient), ("PatientName", None)):
        if keyword not in ds:
            setattr(ds, keyword, value)
    ds.PatientIdentityRemoved = "YES"
    ds.LongitudinalTemporalInformationModified = "MODIFIED"
    ds.DeidentificationMethod = METHOD
    codes = []
    for value, meaning in METHOD_CODES:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(codes)
    for keyword in (
        "PatientIdentityRemoved",
        "LongitudinalTemporalInformationModified",
        "DeidentificationMethod",
        "DeidentificationMethodCodeSequence",
    ):
        out.add(keyword, "set")
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        if "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = keys.uid(str(meta.MediaStorageSOPInstanceUID))
            out.add("MediaStorageSOPInstanceUID", "uid-remapped")
        for keyword in META_REMOVED:
            if keyword in meta:
                delattr(meta, keyword)
                out.add(keyword, "removed")
    return out


class Skip(Exception):
    """A file the export leaves out; the message is the reason."""


def _read(path: Path, *, header_only: bool) -> Dataset:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=header_only)
    except InvalidDicomError:
        raise Skip("not a DICOM file") from None
    except Exception as exc:
        raise Skip(f"unreadable DICOM ({type(exc).__name__})") from None
    meta = getattr(ds, "file_meta", None)
    if meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == DICOMDIR_CLASS:
        raise Skip("DICOMDIR (a directory index with patient records): not exported, make a new one")
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        raise Skip("BurnedInAnnotation = YES: text in the pixels, which header de-identification keeps")
    return ds


def output_path(ds: Dataset, keys: Keys, source: str, taken: set[PurePath]) -> PurePath:
    """Where a de-identified file goes: `<patient>/<study>/<series>/<instance>.dcm`, every name keyed (a
    second file of one SOPInstanceUID, e.g. in another transfer syntax, gets its own); added to `taken`."""
    patient = patient_key(ds) or f"source:{source}"

    def uid(keyword: str) -> str:
        return str(ds.get(keyword, "") or "").strip()

    study = uid("StudyInstanceUID") or f"{patient}\x00no-study"
    series = uid("SeriesInstanceUID") or f"{study}\x00no-series"
    instance = uid("SOPInstanceUID") or f"source:{source}"
    folder = PurePath(keys.name("pt", patient), keys.name("st", study), keys.name("se", series))
    out = folder / (keys.name("im", instance) + ".dcm")
    if out in taken:
        out = folder / (keys.name("im", f"{instance}\x00{source}") + ".dcm")
    taken.add(out)
    return out


def _target(dst: Path, rel: PurePath) -> Path:
    """`dst / rel`, its folders made; ConfigError unless it resolves inside `dst` and is new."""
    if rel.is_absolute() or ".." in rel.parts:
        raise ConfigError(f"OUT {dst}: refusing to write outside it")
    target = dst / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    if not inside(target, dst):
        raise ConfigError(f"OUT {dst}: a folder in it links outside it; refusing to write there")
    if target.exists() or target.is_symlink():
        raise ConfigError(f"OUT {dst}: {rel.as_posix()} exists already; refusing to overwrite it")
    return target


@dataclass
class DeidentifyResult:
    """What an export wrote and left out."""

    source: Path
    target: Path
    log: Path
    written: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (keyed hash of the input path, reason)
    patients: set[str] = field(default_factory=set)
    studies: set[str] = field(default_factory=set)
    series: set[str] = field(default_factory=set)
    manifest_rows: int = 0
    masks: int = 0
    notes: list[str] = field(default_factory=list)
    gate: GateReport | None = None


def _check_folders(src: Path, dst: Path, log_path: Path) -> None:
    if not src.is_dir():
        raise ConfigError(f"IN {src}: not a folder")
    if dst == src or dst.is_relative_to(src) or src.is_relative_to(dst):
        raise ConfigError(f"OUT {dst} and IN {src} must be separate folders, neither inside the other")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ConfigError(f"OUT {dst}: exists and is not an empty folder; write each export to a new folder")
    if inside(log_path, src):
        raise ConfigError(f"--log {log_path}: inside IN {src}; the export never writes into its source")


def _manifest_rows(manifest: Path, src: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The manifest's columns and rows; DataValidationError naming row and column for a path leaving IN."""
    if outside_reason(src, MANIFEST_NAME) is not None:
        raise DataValidationError(str(manifest), ["a symbolic link whose target is outside IN"])
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [(c or "").strip().lower() for c in reader.fieldnames or []]
        rows = [{(k or "").strip().lower(): str(v or "").strip() for k, v in row.items()} for row in reader]
    problems = [p for row_no, row in enumerate(rows, start=1) for p in path_problems(src, row_no, row)]
    if problems:
        raise DataValidationError(str(manifest), problems)
    return columns, rows


def _files(src: Path) -> list[Path]:
    return [
        p
        for p in sorted(src.rglob("*"))
        if (p.is_file() or (p.is_symlink() and not p.is_dir()))
        and not any(s.startswith(".") for s in p.relative_to(src).parts)
    ]


def deidentify_folder(
    src: Path, dst: Path, secret: bytes, *, log_path: Path | None = None
) -> DeidentifyResult:
    """Write a de-identified copy of the DICOM files under `src` to the new folder `dst` (keyed names,
    study / series / instance tree), log what changed per file (JSON lines, default
    `dst/deidentify-log.jsonl`) and check `dst` with the PHI gate."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    log_path = Path(log_path) if log_path is not None else dst / LOG_NAME
    _check_folders(src, dst, log_path)
    keys = Keys(secret)
    result = DeidentifyResult(src, dst, log_path)
    manifest = src / MANIFEST_NAME
    table = _manifest_rows(manifest, src) if manifest.is_file() or manifest.is_symlink() else None
    masks = {(src / row["mask"]).resolve() for row in (table[1] if table else []) if row.get("mask")}
    dst.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    taken: set[PurePath] = set()
    with log_path.open("w", encoding="utf-8") as log:
        for path in _files(src):
            rel = path.relative_to(src).as_posix()
            if path == manifest or path.resolve() in masks:
                continue
            source = keys.hashed(rel)
            try:
                if not inside(path, src):
                    raise Skip("a symbolic link whose target is outside IN: not read")
                if not path.is_file():
                    raise Skip("a symbolic link to nothing")
                ds = _read(path, header_only=False)
                out_rel = output_path(
                    ds, keys, rel, taken
                )  # from the original identity, before it is replaced
                changes = deidentify_dataset(ds, keys)
                target = _target(dst, out_rel)
                try:
                    ds.save_as(target, enforce_file_format=True)
                except Exception as exc:
                    target.unlink(missing_ok=True)
                    raise Skip(f"cannot be written back ({type(exc).__name__})") from None
            except Skip as why:
                result.skipped.append((source, str(why)))
                _log(log, None, source, "skipped", reason=str(why))
                continue
            result.written += 1
            result.patients.add(changes.patient)
            result.studies.add(str(ds.get("StudyInstanceUID", "")))
            result.series.add(str(ds.get("SeriesInstanceUID", "")))
            _log(log, out_rel, source, "written", patient=changes.patient, changes=changes.as_log())
        if table is not None:
            _translate_manifest(table, src, dst, keys, result, log)
    result.gate = check_folder(dst)
    return result


def _log(handle, out_rel: PurePath | None, source: str, status: str, **extra: object) -> None:
    record = {
        "file": out_rel.as_posix() if out_rel else None,
        "source-hash": source,
        "status": status,
        **extra,
    }
    handle.write(json.dumps(record) + "\n")


def _translate_manifest(
    table: tuple[list[str], list[dict[str, str]]],
    src: Path,
    dst: Path,
    keys: Keys,
    result: DeidentifyResult,
    log,
) -> None:
    """The manifest with pseudonymous patient and study ids, labels kept, masks rewritten, keyed names."""
    columns, rows = table
    kept = [c for c in ("patient_id", "study_id", "label", "mask") if c in columns]
    changes = FileChanges()
    for column in sorted(set(columns) - set(kept)):
        changes.add(column, "removed")
        result.notes.append(f"{MANIFEST_NAME}: column {column!r} not exported")
    out_rows, masks = [], {}
    for row in rows:
        new = {c: row.get(c, "") for c in kept}
        patient = row.get("patient_id", "")
        if patient:
            new["patient_id"] = keys.patient_id(patient)
            changes.add("patient_id", "pseudonymised")
        study = row.get("study_id", "")
        if study:
            uid_like = UID_LIKE.match(study) is not None
            new["study_id"] = keys.uid(study) if uid_like else keys.study_id(study)
            changes.add("study_id", "uid-remapped" if uid_like else "pseudonymised")
        if row.get("mask"):
            if row["mask"] not in masks:
                masks[row["mask"]] = _rewrite_mask(PurePath(row["mask"]), src, dst, result, keys, log)
            new["mask"] = masks[row["mask"]]
            changes.add("mask", "rewritten" if new["mask"] else "emptied")
        out_rows.append(new)
    with _target(dst, PurePath(MANIFEST_NAME)).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=kept)
        writer.writeheader()
        writer.writerows(out_rows)
    result.manifest_rows = len(out_rows)
    _log(log, PurePath(MANIFEST_NAME), keys.hashed(MANIFEST_NAME), "written", changes=changes.as_log())


def _rewrite_mask(rel: PurePath, src: Path, dst: Path, result: DeidentifyResult, keys: Keys, log) -> str:
    """A manifest's NIfTI mask with a fresh header (voxels and affine only: no text fields, no extensions)
    under a keyed name; '' when it cannot be."""
    import nibabel as nib
    import numpy as np

    out_rel = PurePath("masks", keys.name("mk", rel.as_posix()) + ".nii.gz")
    path = src / rel
    source = keys.hashed(rel.as_posix())
    reason = None
    if not inside(path, src):  # checked with the manifest already; never read a file outside IN
        reason = "mask outside IN"
    elif not path.is_file():
        reason = "mask named in the manifest does not exist"
    elif not path.name.lower().endswith(NIFTI_SUFFIXES):
        reason = "mask is not a NIfTI file"
    else:
        try:
            image = nib.load(path)
            clean = nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine)
        except Exception as exc:
            reason = f"mask unreadable ({type(exc).__name__})"
    if reason is not None:
        result.skipped.append((source, reason))
        _log(log, None, source, "skipped", reason=reason)
        return ""
    nib.save(clean, _target(dst, out_rel))
    result.masks += 1
    header = [{"tag": "nifti-header", "action": "replaced", "count": 1}]
    _log(log, out_rel, source, "written", changes=header)
    return out_rel.as_posix()
