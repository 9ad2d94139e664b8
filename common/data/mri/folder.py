"""A site folder read once: one listing, and each file's metadata kept for the PHI gate and the loaders.

The PHI gate must see every file before any is used, and the loaders must then decode the same files. So
`read_site_folder` lists the folder once and parses each DICOM file once with its pixel data deferred
(pydicom's `defer_size`: the header is parsed, the pixel data stays on disk until the loader decodes it,
so the gate never holds pixels), and opens each NIfTI file once (nibabel reads the header; the voxels stay
behind its lazy array proxy until the loader asks). `kept_site_folder` makes one such reading the one every
reader of that folder uses for the duration of a site load (the gate in `client/`, then the task's loader
in `common/`), without either having to pass it through the other's interface.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from fedward.common.data.mri.files import SiteFiles, list_site_files

DEFER_BYTES = 16 * 1024
"""Elements larger than this (a slice's pixel data) stay on disk until read: the gate never holds pixels."""


@dataclass
class SiteFolder:
    """One reading of a site folder: its files by kind, each DICOM file's parsed dataset (pixel data
    deferred) or why it could not be parsed, and each NIfTI file's lazily loaded image or why not."""

    root: Path
    files: SiteFiles
    dicom: dict[Path, Dataset | str] = field(default_factory=dict)
    nifti: dict[Path, Any | str] = field(default_factory=dict)


def read_dicom(path: Path) -> Dataset | str:
    """The file's dataset with large elements deferred, or the reason it is not a usable DICOM file."""
    try:
        return pydicom.dcmread(path, defer_size=DEFER_BYTES)
    except InvalidDicomError:
        return "not a DICOM file"
    except Exception as exc:  # truncated header, bad element lengths, ...
        return f"unreadable DICOM ({type(exc).__name__}: {exc})"


def open_nifti(path: Path) -> Any | str:
    """The NIfTI image (header read, voxels not yet), or the reason it cannot be opened."""
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as exc:
        return f"unreadable NIfTI ({type(exc).__name__}: {exc})"


def read_site_folder(root: Path) -> SiteFolder:
    """List `root` once and parse each DICOM file and open each NIfTI file once (no pixels, no voxels)."""
    root = Path(root)
    files = list_site_files(root)
    return SiteFolder(
        root,
        files,
        dicom={path: read_dicom(path) for path in files.dicom},
        nifti={path: open_nifti(path) for path in files.nifti},
    )


_KEPT: ContextVar[SiteFolder | None] = ContextVar("kept_site_folder", default=None)


@contextmanager
def kept_site_folder(root: Path) -> Iterator[SiteFolder]:
    """Read `root` once (or reuse the enclosing block's reading of it); within the block,
    `site_folder(root)` and the loaders' per-file lookups use this reading."""
    kept = _KEPT.get()
    if kept is not None and kept.root == Path(root):
        yield kept
        return
    folder = read_site_folder(root)
    token = _KEPT.set(folder)
    try:
        yield folder
    finally:
        _KEPT.reset(token)


def site_folder(root: Path) -> SiteFolder:
    """The reading of `root` kept by the enclosing `kept_site_folder`, else a fresh one."""
    kept = _KEPT.get()
    if kept is not None and kept.root == Path(root):
        return kept
    return read_site_folder(root)


def dicom_dataset(path: Path) -> Dataset | str:
    """`path`'s dataset from the kept reading when it holds the file, else parsed now."""
    kept = _KEPT.get()
    found = kept.dicom.get(path) if kept is not None else None
    return found if found is not None else read_dicom(path)


def nifti_image(path: Path) -> Any | str:
    """`path`'s NIfTI image from the kept reading when it holds the file, else opened now."""
    kept = _KEPT.get()
    found = kept.nifti.get(path) if kept is not None else None
    return found if found is not None else open_nifti(path)
