"""Helpers shared by the 3D loaders: multi-contrast stacking, NIfTI volumes and tumour masks, each
checked (shape, finite values, a usable affine) so that a damaged file is skipped with its reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedward.common.data.mri.files import relative
from fedward.common.data.mri.folder import nifti_image
from fedward.common.data.mri.sample import CLASSES, NO_TUMOUR, UNLABELLED, SkipFile, Skipped, pixel_problem


def stack_channels(volumes: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Stack (array, affine) contrasts into (C, i, j, k) on the first one's grid.

    A contrast acquired on another grid is resampled onto the first with MONAI's ResampleToMatch;
    SkipFile when that fails or leaves nothing to see (grids that do not overlap).
    """
    ref, ref_affine = volumes[0]
    channels = [ref]
    for number, (array, affine) in enumerate(volumes[1:], start=2):
        if array.shape == ref.shape and np.allclose(affine, ref_affine, atol=1e-3):
            channels.append(array)
            continue
        from monai.data import MetaTensor
        from monai.transforms import ResampleToMatch

        try:
            src = MetaTensor(torch.from_numpy(array[None]), affine=torch.from_numpy(affine))
            dst = MetaTensor(torch.zeros((1, *ref.shape)), affine=torch.from_numpy(ref_affine))
            resampled = np.asarray(ResampleToMatch()(src, dst).array[0], dtype=np.float32)
        except Exception as exc:
            raise SkipFile(
                f"contrast {number} could not be resampled onto the first one's grid ({type(exc).__name__})"
            ) from None
        if problem := pixel_problem(resampled):
            raise SkipFile(f"contrast {number} does not overlap the first one's grid: {problem}")
        channels.append(resampled)
    return np.stack(channels).astype(np.float32), ref_affine


def read_nifti(path: Path, *, mask: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """3D array (float32) and affine of a NIfTI file; a 4D file with one volume is squeezed.

    Raises SkipFile with the reason when the file is unreadable, not one 3D volume, holds non-finite
    voxels, has a singular or non-finite affine, or (an image, not a `mask`) has no contrast at all.
    """
    img = nifti_image(path)  # opened once (voxels not yet read) when the site folder's reading is kept
    if isinstance(img, str):
        raise SkipFile(img)
    try:
        array = np.asarray(img.dataobj, dtype=np.float32)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # truncated gzip, bad header, wrong format...
        raise SkipFile(f"unreadable NIfTI ({type(exc).__name__}: {exc})") from None
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise SkipFile(f"shape {array.shape}, expected one 3D volume")
    problem = _mask_values(array) if mask else pixel_problem(array)
    if problem:
        raise SkipFile(problem)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise SkipFile("affine (voxel to mm) is singular or not finite, expected a valid NIfTI orientation")
    return array, affine


def _mask_values(array: np.ndarray) -> str | None:
    if array.size == 0:
        return "empty mask, expected one label per voxel"
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    return f"{bad} non-finite voxel(s) (NaN or infinity), expected labels" if bad else None


def mask_problem(mask: np.ndarray, shape: tuple[int, ...], label: int) -> str | None:
    """Why a tumour mask cannot be used with an image of spatial `shape` and class `label`, or None:
    another grid, or no tumour voxel in a case labelled as a tumour."""
    if tuple(mask.shape) != tuple(shape):
        return f"mask shape {mask.shape} differs from the image's {tuple(shape)}"
    if label not in (UNLABELLED, NO_TUMOUR) and not np.any(mask > 0):
        return f"empty mask (no tumour voxel) for a case labelled {CLASSES[label]}"
    return None


def load_mask(
    path: Path,
    shape: tuple[int, ...],
    root: Path,
    skipped: list[Skipped],
    label: int = UNLABELLED,
    affine: np.ndarray | None = None,
) -> np.ndarray | None:
    """A tumour mask (non-zero = tumour) on a volume's voxel grid; None (and a reason) if unusable.
    With the image's NIfTI `affine`, a mask of the same shape but another orientation or placement (a
    flipped or shifted grid would put the tumour on other voxels) is refused too."""
    if not path.is_file():
        skipped.append(Skipped(relative(path, root), "mask file not found"))
        return None
    try:
        array, mask_affine = read_nifti(path, mask=True)
    except SkipFile as why:
        skipped.append(Skipped(relative(path, root), f"mask unusable: {why}"))
        return None
    problem = mask_problem(array, shape, label)
    if problem is None and affine is not None and not np.allclose(mask_affine, affine, atol=1e-3, rtol=1e-4):
        problem = (
            "mask orientation (NIfTI affine, voxel to mm) differs from the image's: the tumour would land "
            "on other voxels; save the mask on the image's grid"
        )
    if problem:
        skipped.append(Skipped(relative(path, root), problem))
        return None
    return (array > 0).astype(np.uint8)
