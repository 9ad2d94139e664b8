"""Sort a site folder's files into DICOM candidates, NIfTI files and 2D images; keep every path inside it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePath, PureWindowsPath

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Files a site folder may hold that are no image data (manifest, notes, the client's ledger).
IGNORED_SUFFIXES = (".csv", ".txt", ".md", ".json", ".jsonl", ".toml", ".yaml", ".yml", ".log", ".db",
                    ".db-wal", ".db-shm", ".sqlite", ".py", ".pdf", ".xml", ".html")  # fmt: skip
IGNORED_DIRS = ("state",)
OUTSIDE_LINK = "a symbolic link whose target is outside the data folder: not read"


@dataclass
class SiteFiles:
    """A site folder's files by kind (paths sorted); `outside`: links to files outside it, never read."""

    dicom: list[Path] = field(default_factory=list)
    nifti: list[Path] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    outside: list[Path] = field(default_factory=list)


def _name(path: Path) -> str:
    return path.name.lower()


def inside(path: Path, root: Path) -> bool:
    """True when `path`, with every symbolic link followed, lies inside `root` (also resolved)."""
    return path.resolve().is_relative_to(root.resolve())


def outside_reason(root: Path, value: str) -> str | None:
    """Why `value`, a path meant relative to `root`, does not stay inside `root`; None when it does.

    Absolute paths (POSIX or Windows), any `..` component and symbolic links whose target is outside are
    refused; nothing is opened (only the link chain is followed to see where it ends).
    """
    posix, windows = PurePath(value), PureWindowsPath(value)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or windows.root:
        return "an absolute path"
    if ".." in posix.parts or ".." in windows.parts:
        return "a path with '..'"
    if not inside(root / posix, root):
        return "a symbolic link whose target is outside the data folder"
    return None


def list_site_files(site_dir: Path) -> SiteFiles:
    """Every file under `site_dir` except hidden ones, ignored kinds and the `state/` folder; a link
    whose target is outside `site_dir` goes to `outside` (never read)."""
    out = SiteFiles()
    for path in sorted(site_dir.rglob("*")):
        rel = path.relative_to(site_dir)
        if not path.is_file() or any(p.startswith(".") for p in rel.parts):
            continue
        if rel.parts[0] in IGNORED_DIRS:
            continue
        name = _name(path)
        if not name.endswith(IGNORED_SUFFIXES) and not inside(path, site_dir):
            out.outside.append(path)
        elif name.endswith(NIFTI_SUFFIXES):
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
