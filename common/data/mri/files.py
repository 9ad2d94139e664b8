"""Sort a site folder's files into DICOM candidates, NIfTI files and 2D images."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Files a site folder may hold that are no image data (manifest, notes, the client's ledger).
IGNORED_SUFFIXES = (".csv", ".txt", ".md", ".json", ".jsonl", ".toml", ".yaml", ".yml", ".log", ".db",
                    ".db-wal", ".db-shm", ".sqlite", ".py", ".pdf", ".xml", ".html")  # fmt: skip
IGNORED_DIRS = ("state",)


@dataclass
class SiteFiles:
    """A site folder's files by kind (paths sorted)."""

    dicom: list[Path] = field(default_factory=list)
    nifti: list[Path] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)


def _name(path: Path) -> str:
    return path.name.lower()


def list_site_files(site_dir: Path) -> SiteFiles:
    """Every file under `site_dir` except hidden ones, ignored kinds and the `state/` folder."""
    out = SiteFiles()
    for path in sorted(site_dir.rglob("*")):
        rel = path.relative_to(site_dir)
        if not path.is_file() or any(p.startswith(".") for p in rel.parts):
            continue
        if rel.parts[0] in IGNORED_DIRS:
            continue
        name = _name(path)
        if name.endswith(NIFTI_SUFFIXES):
            out.nifti.append(path)
        elif name.endswith(IMAGE_SUFFIXES):
            out.images.append(path)
        elif not name.endswith(IGNORED_SUFFIXES):
            out.dicom.append(path)
    return out


def relative(path: Path, root: Path) -> str:
    """`path` relative to `root` for messages (as given if outside)."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
