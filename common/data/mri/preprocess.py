"""MONAI preprocessing to the model's input grid.

3D: orientation to RAS, isotropic resampling at the finest voxel size, crop to the head, resize to
(size, size, depth). 2D: crop and resize to (size, size). Then per-channel z-score over non-zero
voxels (removes per-scanner intensity scales). Masks follow the image with nearest-neighbour.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    NormalizeIntensityd,
    Orientationd,
    Resized,
    Spacingd,
)

from fedward.common.data.mri.sample import MriSample, SkipFile, pixel_problem


def foreground(image: torch.Tensor) -> torch.Tensor:
    """Voxels above 10 % of the robust intensity range (air and noise floor excluded)."""
    values = np.asarray(image[:, ::2, ::2].detach().cpu(), dtype=np.float32)
    lo, hi = float(values.min()), float(np.percentile(values, 99))
    return image > lo + 0.1 * (hi - lo)


def _spacing(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def model_input(
    sample: MriSample, size: int, depth: int, channels: int
) -> tuple[torch.Tensor, torch.Tensor | None, np.ndarray]:
    """(image (C, size, size[, depth]), mask (1, ...) or None, voxel size of the output grid).

    `depth = 0` means a 2D model. A sample of the wrong dimensionality or channel count, with damaged
    intensities, or one that MONAI cannot resample raises SkipFile (the reason), never another error.
    """
    dims = 2 if depth == 0 else 3
    if sample.spatial_dims != dims:
        kind = "2D image" if sample.spatial_dims == 2 else "3D volume"
        raise SkipFile(f"{kind}, but the run's model takes {dims}D input (image-depth = {depth})")
    image = sample.image
    if image.shape[0] == 1 and channels > 1:
        image = np.repeat(image, channels, axis=0)  # a grey-level image fills every input channel
    if image.shape[0] != channels:
        raise SkipFile(f"{image.shape[0]} channels, the model takes {channels}")
    for channel in image:
        if problem := pixel_problem(channel):
            raise SkipFile(problem)
    affine = torch.from_numpy(sample.affine if sample.affine is not None else np.eye(4))
    keys = ["image"] + (["mask"] if sample.mask is not None else [])
    data = {"image": MetaTensor(torch.from_numpy(np.ascontiguousarray(image)), affine=affine)}
    if sample.mask is not None:
        data["mask"] = MetaTensor(torch.from_numpy(sample.mask[None].astype(np.float32)), affine=affine)
    modes = ("trilinear" if dims == 3 else "bilinear", "nearest")[: len(keys)]
    steps = []
    if dims == 3:
        iso = float(_spacing(sample.affine if sample.affine is not None else np.eye(4)).min())
        steps += [
            Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacingd(keys, pixdim=(iso, iso, iso), mode=("bilinear", "nearest")[: len(keys)]),
        ]
    target = (size, size, depth) if dims == 3 else (size, size)
    steps += [
        CropForegroundd(keys, source_key="image", select_fn=foreground, margin=1, allow_smaller=True),
        Resized(keys, spatial_size=target, mode=modes),
        NormalizeIntensityd("image", nonzero=True, channel_wise=True),
    ]
    try:
        out = Compose(steps)(data)
    except Exception as exc:  # a geometry MONAI cannot resample or crop: skip this sample only
        raise SkipFile(f"preprocessing failed ({type(exc).__name__}), expected a resamplable image") from None
    img = out["image"]
    if not torch.isfinite(img.as_tensor()).all():
        raise SkipFile("non-finite values after preprocessing (degenerate geometry or intensities)")
    voxel = _spacing(img.affine.numpy())[:dims] if dims == 3 else np.ones(2)
    mask = out["mask"].as_tensor().round().to(torch.uint8) if "mask" in out else None
    return img.as_tensor().float().contiguous(), mask, voxel
