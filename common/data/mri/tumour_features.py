"""Per-tumour features from a whole-tumour mask and its image: size, place, shape, intensities.

Pure functions, as MONAI's metrics are: arrays in, a fixed-length float vector out. Every scale is fixed
(no statistics fitted at a site), so every site encodes its cases alike. An empty mask gives zeros with
`presence` 0. Axes are the model input's (RAS after preprocessing: axis 0 runs left to right, so the
mid-sagittal plane is the middle of axis 0 of a head-cropped image).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

LOG_VOLUME_SCALE = float(np.log1p(1e6))  # log1p(mm³) / this: a 1-litre tumour maps to about 1
INTENSITY_CLIP = 10.0  # intensity features (units of the input, z-scored per channel) clipped to ±this
_SHAPE = ("presence", "log-volume", "centroid-x", "centroid-y", "centroid-z", "midline-distance")
_SHAPE += ("extent-x", "extent-y", "extent-z", "box-fill", "surface-ratio")
_PER_CONTRAST = ("mean", "sd", "p10", "p90")


def feature_names(contrasts: Sequence[str], spatial_dims: int = 3) -> tuple[str, ...]:
    """The names of `tumour_features`' entries, in order (2D images have no z entries)."""
    shape = tuple(n for n in _SHAPE if spatial_dims == 3 or not n.endswith("-z"))
    return shape + tuple(f"{c}-{stat}" for c in contrasts for stat in _PER_CONTRAST)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of a boolean mask (the mask itself when empty)."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def brain_mask(image: np.ndarray) -> np.ndarray:
    """Non-background voxels of an image (C, ...): not exactly zero in some channel (the preprocessing's
    z-score over non-zero voxels leaves background at 0)."""
    return np.any(image != 0, axis=0)


def shape_features(mask: np.ndarray, voxel_mm: Sequence[float]) -> np.ndarray:
    """Presence, log volume, centroid (−1..1 per axis), |centroid x| (distance from the mid-sagittal plane,
    normalised), bounding-box extent per axis (fraction of the image), box fill (voxels / box voxels) and
    surface ratio (voxels with a face neighbour outside the mask / voxels: 1 for a thin shape, small for a
    compact one) of a boolean mask (...)."""
    mask = np.asarray(mask, dtype=bool)
    dims = mask.ndim
    out = np.zeros(len(_SHAPE) - 2 * (3 - dims), dtype=np.float32)  # 2D: no centroid-z, no extent-z
    count = int(mask.sum())
    if count == 0:
        return out
    spacing = np.asarray(voxel_mm, dtype=np.float64)[:dims]
    shape = np.asarray(mask.shape, dtype=np.float64)
    where = np.argwhere(mask)
    centroid = where.mean(axis=0) / np.maximum(shape - 1, 1) * 2 - 1
    lo, hi = where.min(axis=0), where.max(axis=0)
    extent = (hi - lo + 1) / shape
    interior = ndimage.binary_erosion(mask, border_value=0)
    out[0] = 1.0
    out[1] = np.log1p(count * float(np.prod(spacing))) / LOG_VOLUME_SCALE
    out[2 : 2 + dims] = centroid
    out[2 + dims] = abs(centroid[0])
    out[3 + dims : 3 + 2 * dims] = extent
    out[3 + 2 * dims] = count / float(np.prod(hi - lo + 1))
    out[4 + 2 * dims] = (count - int(interior.sum())) / count
    return out


def intensity_features(image: np.ndarray, mask: np.ndarray, brain: np.ndarray | None = None) -> np.ndarray:
    """Per channel of `image` (C, ...): mean, sd, 10th and 90th percentile inside `mask`, each minus the
    channel's median over the brain (`brain_mask` by default), clipped to ±INTENSITY_CLIP; zeros when the
    mask is empty."""
    image = np.asarray(image, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros((image.shape[0], len(_PER_CONTRAST)), dtype=np.float32)
    if not mask.any():
        return out.ravel()
    brain = brain_mask(image) if brain is None else np.asarray(brain, dtype=bool)
    brain = brain if brain.any() else np.ones_like(mask)
    for c, channel in enumerate(image):
        inside = channel[mask]
        reference = float(np.median(channel[brain]))
        p10, p90 = np.percentile(inside, [10, 90])
        out[c] = [inside.mean() - reference, inside.std(), p10 - reference, p90 - reference]
    return np.clip(out, -INTENSITY_CLIP, INTENSITY_CLIP).ravel()


def tumour_features(
    image: np.ndarray, mask: np.ndarray, voxel_mm: Sequence[float], *, largest_only: bool = True
) -> np.ndarray:
    """The feature vector of one case (`feature_names` order): `shape_features` of the mask, then
    `intensity_features` per channel of `image` (C, ...). `largest_only` keeps the mask's largest
    connected component (a predicted mask's stray voxels would move the centroid)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != np.asarray(image).shape[1:]:
        raise ValueError(f"mask shape {mask.shape} differs from the image's {np.asarray(image).shape[1:]}")
    if largest_only:
        mask = largest_component(mask)
    return np.concatenate([shape_features(mask, voxel_mm), intensity_features(image, mask)])
