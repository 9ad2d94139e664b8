"""Helpers shared by the 3D loaders: multi-contrast stacking and tumour masks from NIfTI."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from common.data.mri.files import relative
from common.data.mri.sample import Skipped


def stack_channels(volumes: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Stack (array, affine) contrasts into (C, i, j, k) on the first one's grid.

    A contrast acquired on another grid is resampled onto the first with MONAI's ResampleToMatch.
    """
    ref, ref_affine = volumes[0]
    channels = [ref]
    for array, affine in volumes[1:]:
        if array.shape == ref.shape and np.allclose(affine, ref_affine, atol=1e-3):
            channels.append(array)
            continue
        from monai.data import MetaTensor
        from monai.transforms import ResampleToMatch

        src = MetaTensor(torch.from_numpy(array[None]), affine=torch.from_numpy(affine))
        dst = MetaTensor(torch.zeros((1, *ref.shape)), affine=torch.from_numpy(ref_affine))
        channels.append(np.asarray(ResampleToMatch()(src, dst).array[0], dtype=np.float32))
    return np.stack(channels).astype(np.float32), ref_affine


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """3D array (float32) and affine of a NIfTI file; a 4D file with one volume is squeezed."""
    img = nib.load(str(path))
    array = np.asarray(img.dataobj, dtype=np.float32)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {array.shape}")
    return array, np.asarray(img.affine, dtype=np.float64)


def load_mask(path: Path, shape: tuple[int, ...], root: Path, skipped: list[Skipped]) -> np.ndarray | None:
    """A tumour mask (non-zero = tumour) on a volume's voxel grid; None (and a reason) if unusable."""
    try:
        array, _ = read_nifti(path)
    except FileNotFoundError:
        skipped.append(Skipped(relative(path, root), "mask file not found"))
        return None
    except Exception as exc:
        skipped.append(Skipped(relative(path, root), f"mask unreadable ({type(exc).__name__}: {exc})"))
        return None
    if array.shape != tuple(shape):
        skipped.append(
            Skipped(relative(path, root), f"mask shape {array.shape} differs from the image's {shape}")
        )
        return None
    return (array > 0).astype(np.uint8)
