"""2D image folders, one per class (glioma/, meningioma/, pituitary/, notumor/), read with PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fedward.common.data.mri.files import relative
from fedward.common.data.mri.manifest import Manifest
from fedward.common.data.mri.sample import MriSample, ScanResult, Skipped, class_index, pixel_problem


def read_image(path: Path) -> np.ndarray:
    """Grey-level float32 (rows, columns) of a PNG/JPEG/TIFF file (colour images are averaged)."""
    with Image.open(path) as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I", "F"):
            return np.asarray(img, dtype=np.float32)
        return np.asarray(img.convert("L"), dtype=np.float32)


def load_images(files: list[Path], root: Path, manifest: Manifest) -> ScanResult:
    """One sample per image whose parent folder names a class.

    The patient id comes from the manifest's `file` column (path relative to the site folder) when
    given, otherwise each image counts as its own patient (slices of one patient may then leak
    across splits: give a manifest when a patient has several images).
    """
    result = ScanResult()
    for path in files:
        label = class_index(path.parent.name)
        if label is None:
            continue
        result.files_read += 1
        rel = relative(path, root)
        try:
            pixels = read_image(path)
        except Exception as exc:
            result.skipped.append(Skipped(rel, f"unreadable image ({type(exc).__name__}: {exc})"))
            continue
        if pixels.ndim != 2 or min(pixels.shape) < 8:
            result.skipped.append(Skipped(rel, f"image of shape {pixels.shape}, expected at least 8x8"))
            continue
        problem = pixel_problem(pixels)
        if problem:
            result.skipped.append(Skipped(rel, problem))
            continue
        entry = manifest.by_file.get(rel.replace("\\", "/"))
        patient = entry.patient_id if entry is not None else rel
        result.samples.append(MriSample(patient, label, pixels[None], rel))
    return result
